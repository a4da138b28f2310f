// Offline preference optimisation: the objective (train/objective.h) that trains a policy with
// any offline loss of the registry (train/losses/registry.h: DPO and its family, IPO, cDPO,
// robust, hinge, SimPO, CPO, ORPO, KTO, BCO, ...) over preference data (train/preference_data.h).
//
// A step takes batch_size pairs (or labelled completions), micro_batch_size at a time; each
// micro-batch puts its chosen and rejected rows through one forward pass (rows 0..b-1 chosen,
// b..2b-1 rejected), gathers the completion tokens' log-probs without a log-softmax over the
// vocabulary (losses/logprobs.h), and hands the loss exactly the inputs its registry entry
// lists: summed and per-token log-probs, lengths, TRL's NLL over the chosen row, KTO's
// mismatched KL rows, and the reference's. Each micro-batch's loss (a mean over its pairs) is
// weighted by its share of the step's pairs, so k micro-batches of b pairs compute one batch of
// k*b pairs. The metrics are the loss's own, with TRL's names (rewards/chosen,
// rewards/accuracies, logps/chosen, ...), averaged over the step's pairs the same way.
//
// The reference (pi_ref) is one of:
//   copy          a frozen copy of the starting model (full fine-tuning; twice the weights)
//   adapters-off  the policy with its LoRA adapters disabled (no second copy: the base is frozen)
//   precomputed   computed once before the first step with the starting model, for every
//                 example, and kept with the checkpoints; sequence-level inputs only
//   none          no reference: for reference-free losses (SimPO, CPO, ORPO, ...) and
//                 reference_free=true
// "auto" is none for a loss without reference inputs, adapters-off with LoRA, copy otherwise.
// The reference log-probs of a pair are computed over that pair's two rows alone, whichever
// kind computes them, so that precomputed values equal the live ones bit for bit.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "train/losses/registry.h"
#include "train/objective.h"
#include "train/preference_data.h"
#include "train/reference_model.h"

namespace lamina::train {


struct PreferenceOptions {
  std::string loss = "sigmoid";  // a registry name or alias (train/losses/registry.h)
  // Hyperparameter overrides by name, as text ("beta" -> "0.2"), validated by the loss.
  std::vector<std::pair<std::string, std::string>> params;
  ReferenceKind reference = ReferenceKind::automatic;
  PreferenceTruncation truncation;
  int32_t pad_id = 0;  // any id of the vocabulary: padding is masked out

  // What a resumed run must share: {"loss", "params", "reference", "max_length", ...}.
  json::Value to_json() const;
};

// What the loss reads, from its registry entry: pairs (chosen/rejected) or single labelled
// completions (KTO, BCO, ...), and whether it takes reference inputs at all.
enum class PreferenceInputLayout { pairs, unpaired };
PreferenceInputLayout input_layout(const LossDefinition& definition);
bool takes_reference(const LossDefinition& definition);

// The fingerprint (train/objective.h) of preference examples: each pair as its chosen and its
// rejected row, each labelled completion as its row.
DataFingerprint preference_fingerprint(const std::vector<PreferencePair>& pairs,
                                       const std::vector<UnpairedExample>& unpaired = {});

class PreferenceObjective : public Objective {
 public:
  // `train` and `validation` hold pairs (or, for a loss on labelled completions, labelled
  // completions; pairs are unpaired as TRL's unpair_preference_dataset does). Throws when the
  // loss is not an offline one, needs inputs that pairs cannot give (scores, win rates, ...), or
  // the reference kind does not fit the loss or the model.
  PreferenceObjective(PreferenceOptions options, const TrainOptions& train_options, PreferenceData train,
                      PreferenceData validation = {});
  ~PreferenceObjective() override;

  void prepare(llama::LlamaWithHead& model, const TrainOptions& options) override;
  StepResult step(llama::LlamaWithHead& model, int64_t step) override;
  bool has_validation() const override;
  // Data parallel: rank r takes rows [r * batch_size, (r + 1) * batch_size) of the step's
  // world_size * batch_size, each micro-batch weighted by its share of the whole step. A loss's
  // batch statistics (BCO's reward baseline, KTO's KL estimate) are taken over the ranks'
  // micro-batches of the same index together, as TRL gathers them across processes: N ranks
  // with --batch-size b compute what one process computes with batch N*b in one micro-batch.
  // Validation runs whole on every rank.
  std::string data_parallel_support() const override;
  json::Value validate(llama::LlamaWithHead& model) override;
  json::Value cursor() const override;
  void restore(const json::Value& cursor) override;
  DataFingerprint fingerprint() const override;
  json::Value settings() const override;
  json::Value state() const override;
  void restore_state(const json::Value& state) override;

  ReferenceKind reference() const;  // resolved (never automatic)
  const LossDefinition& loss() const;
  // The reference's summed log-probs of training example i ({chosen, rejected}; unpaired:
  // {completion, KL completion}), computed now with the reference (precomputed: the stored ones).
  std::pair<double, double> reference_logps(llama::LlamaWithHead& model, size_t example);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lamina::train
