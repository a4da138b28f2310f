// Advantage estimators of the RL losses (preference-losses.md §7), on plain values: advantages
// carry no gradient, so they are computed once, in f64, before the differentiable surrogate.
// Token-level arrays are row-major [B, T] with a keep-mask of the same size.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lamina::train {

// §7.2 GRPO: Â_i = (R_i - mean_g R) / (std R + eps), groups of `group_size` consecutive rows.
// scale "group": std over the group (Bessel-corrected; a group of one has std 0, so Â = 0);
// "batch": std over the whole batch; "none": no division (Dr. GRPO).
std::vector<double> group_advantages(const std::vector<double>& rewards, int64_t group_size, const std::string& scale,
                                     double std_epsilon);
// The Bessel-corrected std of each group (0 for groups of one), one entry per group.
std::vector<double> group_stds(const std::vector<double>& rewards, int64_t group_size);
// Subtracts the group mean only (REINFORCE++-baseline).
std::vector<double> group_centered(const std::vector<double>& rewards, int64_t group_size);

// §7.4 RLOO: A_i = R_i - (Σ_j R_j - R_i) / (k - 1) within each group of k >= 2.
std::vector<double> leave_one_out_advantages(const std::vector<double>& rewards, int64_t group_size);

// §7.1 GAE over the kept tokens of each row, in order: δ_t = rew_t + γ V_next - V_t (V after the
// last kept token = 0), A_t = δ_t + γ λ A_next. Masked entries stay 0.
std::vector<double> generalized_advantages(const std::vector<double>& token_rewards, const std::vector<double>& values,
                                           const std::vector<bool>& mask, int64_t rows, double gamma, double lambda);
// §7.5 return-to-go G_t = Σ_{s >= t} γ^{s-t} rew_s over the kept tokens of each row.
std::vector<double> returns_to_go(const std::vector<double>& token_rewards, const std::vector<bool>& mask,
                                  int64_t rows, double gamma);
// Flat index of the last kept token of each row (-1 for a row with none).
std::vector<int64_t> last_kept_positions(const std::vector<bool>& mask, int64_t rows);

// TRL's masked_whiten: (x - mean) / sqrt(unbiased var + 1e-8) over the kept entries.
void whiten(std::vector<double>& values, const std::vector<bool>& mask);
// OpenRLHF's normalisation: (x - mean) / sqrt(max(population var, min_variance)) over the kept
// entries. Returns {mean, std} that were used.
std::pair<double, double> normalize(std::vector<double>& values, const std::vector<bool>& mask, double min_variance);

// §7.3 DAPO soft overlong punishment: 0 up to L_max - L_c, then ((L_max - L_c) - |y|) / L_c
// down to -1 at L_max, and -1 beyond.
double overlong_penalty(double length, double max_length, double buffer_length);

// Mean and Bessel-corrected std of a list (std 0 for fewer than two values).
double sample_std(const std::vector<double>& values);

}  // namespace lamina::train
