// MoA's plan search (sparse-attention.md §1.4): give every head of every layer one of the
// candidate elastic rules so that the summed loss increase ΔL (influence.h) is least, subject to
//   - the average density over all heads (with the kv-group charge below: the KV-cache fraction)
//     at most the budget, at every profiled length, exactly (checked on integer key counts, never
//     on rounded fractions);
//   - at most two distinct rules per layer (a layer then runs as at most two pattern classes).
//
// How it is solved (deterministic, no MILP solver):
// 1. Per layer, every option exactly: for a pair of rules (a, b) with a the sparser at the
//    primary length, every head pays the same density to move from a to b, so the best way to
//    put k heads on b is the k heads that gain most; all pairs x all k give the layer's options,
//    of which the Pareto front (density, cost) is kept.
// 2. Over layers, a knapsack (dynamic programming) on the density at the primary length, in
//    units of 1/resolution of the whole model's dense count, each option's density rounded up:
//    the rounding can only leave budget unused (at most one unit per layer), never exceed it.
// 3. Several lengths: the objective is the sum of ΔL over the lengths (each ΔL is a change of
//    the mean token loss of an item, so they add up on one scale); the primary length is the
//    longest (where the cache is largest) and the budgets at the other lengths are enforced by a
//    Lagrange multiplier mu on their densities, bisected to the smallest mu whose plan fits
//    them all. This is a weighted-sum form of the paper's epsilon-constraint method: one plan,
//    not a Pareto set to validate afterwards. With one length it is the exact DP alone.
//
// What a head's choice costs (DensityCharge), under GQA:
// - query_head: each query head pays its own density (the average the measure defines): right
//   for attention work, which is done per query head;
// - kv_group: the budget is the KV cache (the kv-cache measure only): each KV head pays, for each
//   of its query heads, the slots of its ring, the widest (sink + window) among them resolved at
//   each length (MoaPlan::kv_cache_fraction), since that is what llama::SparseKvCache allocates.
//   Once a group pays for a wide ring its other heads may use it for free, so step 1 becomes: for
//   a pair of rules (a, b), a group is "closed" (every head on a) or "open" (some heads on b, each
//   of its heads on whichever of a and b loses less, or all on b), every open group pays the same
//   ring, and the best way to open k groups is the k that gain most. Still exact per layer when
//   the candidates share one sink (the grid's do); otherwise an open group is charged the pair's
//   ring, which can be more than it holds, never less. The ring terms of the other lengths go
//   into the multiplier's cost per group, not per head.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/sparse/influence.h"
#include "models/sparse/moa_plan.h"

namespace lamina::sparse {

// MoA's grid, 6 alphas evenly over [-2048, 8192] times `alpha_scale` and 9 betas over [0, 1]:
// 54 rules, alpha-major. A scale of N / 8192 fits a short longest length N (the paper's grid
// is made for 2k-8k inputs; at 1k most of its rules would be dense or sink-only).
std::vector<ElasticRule> candidate_rules(double alpha_scale = 1.0, int64_t sink = kMoaSink);

// What the search minimises: ΔL of every (length, layer, head, candidate).
struct SearchProblem {
  int64_t layers = 0, heads = 0;
  std::vector<int64_t> lengths;          // profiled lengths, distinct
  std::vector<ElasticRule> candidates;   // the rules a head may get
  std::vector<double> loss;              // [lengths][layers][heads][candidates], flattened

  double at(size_t length_index, int64_t layer, int64_t head, size_t candidate) const {
    return loss[((length_index * size_t(layers) + size_t(layer)) * size_t(heads) + size_t(head)) * candidates.size() +
                candidate];
  }
};
// ΔL of every candidate from a profile's levels at `lengths` (each must be a level of it).
SearchProblem problem_from_profile(const InfluenceProfile& profile, const std::vector<int64_t>& lengths,
                                   std::vector<ElasticRule> candidates);

enum class DensityCharge { query_head, kv_group };
// "query-head" or "kv-group"; anything else is an Error naming `what`.
DensityCharge density_charge_from_name(const std::string& name, const std::string& what);
const char* density_charge_name(DensityCharge charge);

struct SearchOptions {
  double density = 0.5;  // the budget: average density over every head, at every length
  DensityMeasure measure = DensityMeasure::attention_pairs;
  int64_t resolution = 20000;  // density units of the knapsack over the whole model
  DensityCharge charge = DensityCharge::query_head;  // kv_group needs measure kv_cache and kv_heads
  // KV heads per layer (the problem's heads a multiple of it): needed by kv_group; with
  // query_head, when given (> 0), only for reporting the KV-cache fraction.
  int64_t kv_heads = 0;
};

struct SearchResult {
  MoaPlan plan;
  std::vector<double> loss;     // ΔL summed over heads, per length of the problem
  std::vector<double> density;  // the plan's density per length, averaged over query heads
  // The plan's KV cache over a dense one per length (MoaPlan::kv_cache_fraction); empty when
  // options.kv_heads is 0. With the kv_group charge this is what the budget holds.
  std::vector<double> kv_fraction;
  double total_loss = 0;        // the objective: the sum of `loss`
  double multiplier = 0;        // the mu that enforced the non-primary lengths (0: not needed)
};

// Throws when no plan fits (the budget is below the sparsest candidate's density).
SearchResult search_plan(const SearchProblem& problem, const SearchOptions& options);

// ΔL of a given plan per length of the problem's profile levels (for comparing the search with
// the uniform baseline on the same influence).
std::vector<double> plan_loss(const InfluenceProfile& profile, const std::vector<int64_t>& lengths, const MoaPlan& plan);

}  // namespace lamina::sparse
