// The registry rows of each loss family, one function per source file; registry.cpp joins
// them into the one table (sections of preference-losses.md in brackets).
#pragma once

#include <vector>

#include "train/losses/loss.h"

namespace lamina::train {

std::vector<LossDefinition> paired_reference_losses();  // paired.cpp          [§2.1-2.12]
std::vector<LossDefinition> paired_variant_losses();    // paired_variants.cpp [§2.13-2.20]
std::vector<LossDefinition> reference_free_losses();    // reference_free.cpp  [§4]
std::vector<LossDefinition> unpaired_losses();          // unpaired.cpp        [§5]
std::vector<LossDefinition> online_losses();            // online.cpp          [§6]
std::vector<LossDefinition> policy_gradient_losses();   // policy_gradient.cpp [§7]

}  // namespace lamina::train
