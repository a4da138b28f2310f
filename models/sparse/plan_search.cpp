// MoA's plan search: exact per-layer options, a knapsack over layers, a multiplier for the other
// lengths (plan_search.h explains the method).
#include "models/sparse/plan_search.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "tensor/error.h"

namespace lamina::sparse {

std::vector<ElasticRule> candidate_rules(double alpha_scale, int64_t sink) {
  LAMINA_CHECK(alpha_scale > 0 && std::isfinite(alpha_scale) && sink >= 0, "candidate_rules: alpha scale ",
               alpha_scale, ", sink ", sink);
  std::vector<ElasticRule> rules;
  for (int a = 0; a < 6; ++a)
    for (int b = 0; b < 9; ++b) {
      ElasticRule rule;
      rule.alpha = std::round(alpha_scale * (-2048.0 + 2048.0 * a));  // whole keys
      rule.beta = 0.125 * b;
      rule.sink = sink;
      rules.push_back(rule);
    }
  return rules;
}

SearchProblem problem_from_profile(const InfluenceProfile& profile, const std::vector<int64_t>& lengths,
                                   std::vector<ElasticRule> candidates) {
  LAMINA_CHECK(!lengths.empty() && !candidates.empty(), "problem_from_profile: no lengths or no candidates");
  SearchProblem problem;
  problem.layers = profile.layers;
  problem.heads = profile.heads;
  problem.lengths = lengths;
  problem.candidates = std::move(candidates);
  for (int64_t length : lengths) {
    const std::vector<double> losses = profile.level(length).rule_losses(problem.candidates);
    problem.loss.insert(problem.loss.end(), losses.begin(), losses.end());
  }
  return problem;
}

DensityCharge density_charge_from_name(const std::string& name, const std::string& what) {
  if (name == "query-head") return DensityCharge::query_head;
  if (name == "kv-group") return DensityCharge::kv_group;
  throw Error(str_cat(what, ": unknown density charge '", name, "' (expected query-head or kv-group)"));
}

const char* density_charge_name(DensityCharge charge) {
  return charge == DensityCharge::query_head ? "query-head" : "kv-group";
}

namespace {

// One way to fill a layer: heads on rule `sparse`, the `moved` heads that gain most on `dense`
// (with the kv-group charge: the `moved` KV groups that gain most opened to `dense`).
struct LayerOption {
  int64_t units = 0;
  double cost = 0;
  uint32_t sparse = 0, dense = 0, moved = 0;
};

struct Solution {
  std::vector<uint32_t> assignment;  // [layers][heads] candidate index
  bool found = false;
};

class Solver {
 public:
  Solver(const SearchProblem& problem, const SearchOptions& options) : problem_(problem), options_(options) {
    const size_t lengths = problem.lengths.size(), rules = problem.candidates.size();
    primary_ = size_t(std::max_element(problem.lengths.begin(), problem.lengths.end()) - problem.lengths.begin());
    by_group_ = options.charge == DensityCharge::kv_group;
    group_ = by_group_ ? problem.heads / options.kv_heads : 1;
    allowed_.assign(lengths * rules, 0);
    budget_.assign(lengths, 0);
    const double heads_total = double(problem.layers * problem.heads);
    for (size_t n = 0; n < lengths; ++n) {
      const int64_t length = problem.lengths[n];
      for (size_t r = 0; r < rules; ++r) {
        const ElasticRule& rule = problem.candidates[r];
        allowed_[n * rules + r] = head_allowed_count(rule.sink, rule.window(length), length, options.measure);
      }
      // Whole keys within density x dense over every head: compared as integers from here on.
      budget_[n] = int64_t(std::floor(options.density * heads_total * double(dense_count(length, options.measure))));
    }
    const int64_t total_dense = problem.layers * problem.heads * dense_count(problem.lengths[primary_], options.measure);
    unit_ = std::max<int64_t>(1, total_dense / options.resolution);
    budget_units_ = budget_[primary_] / unit_;
    // Rules from sparsest to densest at the primary length (ties by index): option pairs run
    // (sparser, denser) in this order.
    order_.resize(rules);
    std::iota(order_.begin(), order_.end(), uint32_t(0));
    std::stable_sort(order_.begin(), order_.end(), [&](uint32_t a, uint32_t b) {
      return allowed_[primary_ * rules + a] < allowed_[primary_ * rules + b];
    });
  }

  size_t primary() const { return primary_; }
  int64_t allowed(size_t length_index, size_t rule) const {
    return allowed_[length_index * problem_.candidates.size() + rule];
  }
  int64_t budget(size_t length_index) const { return budget_[length_index]; }

  // The least-cost assignment within the primary budget for costs ΔL + mu x (density at the
  // other lengths; with the kv-group charge, of the rings).
  Solution solve(double mu) const {
    const int64_t layers = problem_.layers, heads = problem_.heads;
    const size_t rules = problem_.candidates.size();
    std::vector<std::vector<LayerOption>> options(static_cast<size_t>(layers));
    std::vector<double> costs(size_t(layers * heads) * rules);
    for (int64_t layer = 0; layer < layers; ++layer)
      for (int64_t head = 0; head < heads; ++head)
        for (size_t r = 0; r < rules; ++r) {
          double cost = 0;
          for (size_t n = 0; n < problem_.lengths.size(); ++n) {
            cost += problem_.at(n, layer, head, r);
            if (n != primary_ && mu > 0 && !by_group_)
              cost += mu * double(allowed(n, r)) / double(dense_count(problem_.lengths[n], options_.measure));
          }
          costs[size_t(layer * heads + head) * rules + r] = cost;
        }
    for (int64_t layer = 0; layer < layers; ++layer)
      options[size_t(layer)] = by_group_ ? group_front(costs, layer, mu) : layer_front(costs, layer);

    // Knapsack over layers: best[u] = least cost of the layers so far within u units.
    const size_t width = size_t(budget_units_) + 1;
    const double infinity = std::numeric_limits<double>::infinity();
    std::vector<double> best(width, 0.0), next(width);
    std::vector<std::vector<int32_t>> choice(size_t(layers), std::vector<int32_t>(width, -1));
    for (int64_t layer = 0; layer < layers; ++layer) {
      const auto& front = options[size_t(layer)];
      for (size_t u = 0; u < width; ++u) {
        double least = infinity;
        int32_t chosen = -1;
        for (size_t o = 0; o < front.size() && size_t(front[o].units) <= u; ++o) {
          const double total = best[u - size_t(front[o].units)] + front[o].cost;
          if (total < least) {
            least = total;
            chosen = int32_t(o);
          }
        }
        next[u] = least;
        choice[size_t(layer)][u] = chosen;
      }
      best.swap(next);
    }
    Solution solution;
    if (!std::isfinite(best[width - 1])) return solution;
    solution.found = true;
    solution.assignment.assign(size_t(layers * heads), 0);
    size_t u = width - 1;
    for (int64_t layer = layers - 1; layer >= 0; --layer) {
      const LayerOption& option = options[size_t(layer)][size_t(choice[size_t(layer)][u])];
      for (int64_t head = 0; head < heads; ++head) solution.assignment[size_t(layer * heads + head)] = option.sparse;
      if (by_group_) {
        open_groups(costs, layer, option, mu, solution.assignment);
      } else {
        for (int64_t head : moved_heads(costs, layer, option))
          solution.assignment[size_t(layer * heads + head)] = option.dense;
      }
      u -= size_t(option.units);
    }
    return solution;
  }

  bool fits(const Solution& solution) const {
    if (!solution.found) return false;
    for (size_t n = 0; n < problem_.lengths.size(); ++n) {
      int64_t total = 0;
      if (by_group_) {
        // Every query head of a group pays its ring: group x slots, on the budget's scale.
        const size_t group = static_cast<size_t>(group_);
        std::vector<ElasticRule> rules(group);
        for (size_t first = 0; first < solution.assignment.size(); first += group) {
          for (size_t h = 0; h < group; ++h) rules[h] = problem_.candidates[solution.assignment[first + h]];
          total += group_ * kv_group_slots(rules, problem_.lengths[n]);
        }
      } else {
        for (uint32_t rule : solution.assignment) total += allowed(n, rule);
      }
      if (total > budget_[n]) return false;
    }
    return true;
  }

  double loss(const Solution& solution, size_t length_index) const {
    double total = 0;
    for (int64_t layer = 0; layer < problem_.layers; ++layer)
      for (int64_t head = 0; head < problem_.heads; ++head)
        total += problem_.at(length_index, layer, head, solution.assignment[size_t(layer * problem_.heads + head)]);
    return total;
  }

 private:
  // The heads of `layer` that gain most from moving sparse -> dense, best first (ties: lower head).
  std::vector<int64_t> ranked_heads(const std::vector<double>& costs, int64_t layer, uint32_t sparse,
                                    uint32_t dense) const {
    const size_t rules = problem_.candidates.size();
    std::vector<int64_t> heads(size_t(problem_.heads));
    std::iota(heads.begin(), heads.end(), int64_t(0));
    const auto gain = [&](int64_t head) {
      const double* row = costs.data() + size_t(layer * problem_.heads + head) * rules;
      return row[sparse] - row[dense];
    };
    std::stable_sort(heads.begin(), heads.end(), [&](int64_t a, int64_t b) { return gain(a) > gain(b); });
    return heads;
  }

  std::vector<int64_t> moved_heads(const std::vector<double>& costs, int64_t layer, const LayerOption& option) const {
    std::vector<int64_t> heads = ranked_heads(costs, layer, option.sparse, option.dense);
    heads.resize(option.moved);
    return heads;
  }

  // Every (sparser rule, denser rule, heads moved) option of a layer, reduced to its Pareto
  // front in (units, cost), sorted by units.
  std::vector<LayerOption> layer_front(const std::vector<double>& costs, int64_t layer) const {
    const size_t rules = problem_.candidates.size();
    const int64_t heads = problem_.heads;
    std::vector<LayerOption> all;
    for (size_t ia = 0; ia < rules; ++ia)
      for (size_t ib = ia; ib < rules; ++ib) {
        const uint32_t sparse = order_[ia], dense = order_[ib];
        const std::vector<int64_t> ranked = ranked_heads(costs, layer, sparse, dense);
        double cost = 0;
        for (int64_t head = 0; head < heads; ++head) cost += costs[size_t(layer * heads + head) * rules + sparse];
        const int64_t sparse_keys = allowed(primary_, sparse), dense_keys = allowed(primary_, dense);
        const int64_t last = ia == ib ? 0 : heads;
        for (int64_t moved = 0; moved <= last; ++moved) {
          if (moved > 0) {
            const double* row = costs.data() + size_t(layer * heads + ranked[size_t(moved - 1)]) * rules;
            cost -= row[sparse] - row[dense];
          }
          const int64_t keys = (heads - moved) * sparse_keys + moved * dense_keys;
          const int64_t units = (keys + unit_ - 1) / unit_;  // rounded up: never under-counts
          if (units > budget_units_) continue;
          all.push_back({units, cost, sparse, dense, uint32_t(moved)});
        }
      }
    // Stable: among equal (units, cost) the first generated wins, so the result is deterministic.
    std::stable_sort(all.begin(), all.end(), [](const LayerOption& a, const LayerOption& b) {
      return a.units != b.units ? a.units < b.units : a.cost < b.cost;
    });
    std::vector<LayerOption> front;
    for (const LayerOption& option : all)
      if (front.empty() || option.cost < front.back().cost) front.push_back(option);
    return front;
  }

  // ---- the kv-group charge

  // The ring of one group running rules a and b at length `length_index`.
  int64_t pair_slots(size_t length_index, uint32_t a, uint32_t b) const {
    const ElasticRule pair[2] = {problem_.candidates[a], problem_.candidates[b]};
    return kv_group_slots(pair, problem_.lengths[length_index]);
  }

  // The multiplier's term of one group whose ring is `slots(n)` at each non-primary length n.
  template <typename Slots>
  double ring_penalty(double mu, Slots slots) const {
    double penalty = 0;
    if (mu > 0)
      for (size_t n = 0; n < problem_.lengths.size(); ++n)
        if (n != primary_)
          penalty += mu * double(group_ * slots(n)) / double(dense_count(problem_.lengths[n], options_.measure));
    return penalty;
  }

  // What opening a group to the pair (sparse, dense) saves against keeping it closed (all on
  // `sparse`), and how: its heads each on the rule that loses less (ties: sparse), or all on
  // `dense` where that is cheaper (its ring can be narrower at the other lengths).
  struct GroupGain {
    double gain = 0;
    bool all_dense = false;
  };
  std::vector<GroupGain> group_gains(const std::vector<double>& costs, int64_t layer, uint32_t sparse, uint32_t dense,
                                     double mu) const {
    const size_t rules = problem_.candidates.size();
    const double closed_penalty = ring_penalty(mu, [&](size_t n) { return allowed(n, sparse); });
    const double mixed_penalty = ring_penalty(mu, [&](size_t n) { return pair_slots(n, sparse, dense); });
    const double dense_penalty = ring_penalty(mu, [&](size_t n) { return allowed(n, dense); });
    std::vector<GroupGain> gains(size_t(problem_.heads / group_));
    for (size_t g = 0; g < gains.size(); ++g) {
      double closed = closed_penalty, mixed = mixed_penalty, all_dense = dense_penalty;
      for (int64_t h = 0; h < group_; ++h) {
        const double* row = costs.data() + size_t(layer * problem_.heads + int64_t(g) * group_ + h) * rules;
        closed += row[sparse];
        mixed += std::min(row[sparse], row[dense]);
        all_dense += row[dense];
      }
      gains[g] = {closed - std::min(mixed, all_dense), all_dense < mixed};
    }
    return gains;
  }

  // Group indices best first by gain (ties: lower group).
  static std::vector<int64_t> ranked_groups(const std::vector<GroupGain>& gains) {
    std::vector<int64_t> groups(gains.size());
    std::iota(groups.begin(), groups.end(), int64_t(0));
    std::stable_sort(groups.begin(), groups.end(),
                     [&](int64_t a, int64_t b) { return gains[size_t(a)].gain > gains[size_t(b)].gain; });
    return groups;
  }

  // Every (sparser rule, denser rule, groups opened) option of a layer under the kv-group charge,
  // reduced to its Pareto front like layer_front. An open group is charged the pair's ring at
  // the primary length whatever its heads end up on: never less than it holds (the same when
  // the two rules share a sink, as the grid's do), so the budget can only be left unused.
  std::vector<LayerOption> group_front(const std::vector<double>& costs, int64_t layer, double mu) const {
    const size_t rules = problem_.candidates.size();
    const int64_t heads = problem_.heads, groups = heads / group_;
    std::vector<LayerOption> all;
    for (size_t ia = 0; ia < rules; ++ia) {
      const uint32_t sparse = order_[ia];
      double closed = double(groups) * ring_penalty(mu, [&](size_t n) { return allowed(n, sparse); });
      for (int64_t head = 0; head < heads; ++head) closed += costs[size_t(layer * heads + head) * rules + sparse];
      const int64_t sparse_keys = group_ * allowed(primary_, sparse);
      const auto add = [&](int64_t keys, double cost, uint32_t dense, int64_t opened) {
        const int64_t units = (keys + unit_ - 1) / unit_;  // rounded up: never under-counts
        if (units <= budget_units_) all.push_back({units, cost, sparse, dense, uint32_t(opened)});
      };
      add(groups * sparse_keys, closed, sparse, 0);
      for (size_t ib = ia + 1; ib < rules; ++ib) {
        const uint32_t dense = order_[ib];
        const std::vector<GroupGain> gains = group_gains(costs, layer, sparse, dense, mu);
        const std::vector<int64_t> ranked = ranked_groups(gains);
        const int64_t open_keys = group_ * pair_slots(primary_, sparse, dense);
        double cost = closed;
        for (int64_t opened = 1; opened <= groups; ++opened) {
          cost -= gains[size_t(ranked[size_t(opened - 1)])].gain;
          add((groups - opened) * sparse_keys + opened * open_keys, cost, dense, opened);
        }
      }
    }
    std::stable_sort(all.begin(), all.end(), [](const LayerOption& a, const LayerOption& b) {
      return a.units != b.units ? a.units < b.units : a.cost < b.cost;
    });
    std::vector<LayerOption> front;
    for (const LayerOption& option : all)
      if (front.empty() || option.cost < front.back().cost) front.push_back(option);
    return front;
  }

  // Opens the option's groups in `assignment` (whose heads of `layer` are all on option.sparse).
  void open_groups(const std::vector<double>& costs, int64_t layer, const LayerOption& option, double mu,
                   std::vector<uint32_t>& assignment) const {
    if (option.moved == 0) return;
    const size_t rules = problem_.candidates.size();
    const std::vector<GroupGain> gains = group_gains(costs, layer, option.sparse, option.dense, mu);
    const std::vector<int64_t> ranked = ranked_groups(gains);
    for (size_t k = 0; k < option.moved; ++k) {
      const int64_t g = ranked[k];
      for (int64_t h = 0; h < group_; ++h) {
        const size_t head = size_t(layer * problem_.heads + g * group_ + h);
        const double* row = costs.data() + head * rules;
        if (gains[size_t(g)].all_dense || row[option.dense] < row[option.sparse]) assignment[head] = option.dense;
      }
    }
  }

  const SearchProblem& problem_;
  const SearchOptions& options_;
  size_t primary_ = 0;
  bool by_group_ = false;  // the kv-group charge
  int64_t group_ = 1;      // query heads per KV head (1 with the query-head charge)
  std::vector<int64_t> allowed_;  // [lengths][rules]
  std::vector<int64_t> budget_;   // [lengths]
  std::vector<uint32_t> order_;
  int64_t unit_ = 1, budget_units_ = 0;
};

void check_problem(const SearchProblem& problem, const SearchOptions& options) {
  LAMINA_CHECK(problem.layers >= 1 && problem.heads >= 1 && !problem.lengths.empty() && !problem.candidates.empty(),
               "search_plan: ", problem.layers, " layers, ", problem.heads, " heads, ", problem.lengths.size(),
               " lengths, ", problem.candidates.size(), " candidates");
  LAMINA_CHECK(problem.loss.size() ==
                   problem.lengths.size() * size_t(problem.layers * problem.heads) * problem.candidates.size(),
               "search_plan: ", problem.loss.size(), " losses for ", problem.lengths.size(), " lengths x ",
               problem.layers, " layers x ", problem.heads, " heads x ", problem.candidates.size(), " candidates");
  for (size_t n = 0; n < problem.lengths.size(); ++n) {
    LAMINA_CHECK(problem.lengths[n] >= 1, "search_plan: length ", problem.lengths[n], " is not positive");
    for (size_t m = 0; m < n; ++m)
      LAMINA_CHECK(problem.lengths[m] != problem.lengths[n], "search_plan: length ", problem.lengths[n], " twice");
  }
  for (double loss : problem.loss) LAMINA_CHECK(std::isfinite(loss), "search_plan: a loss is not finite");
  if (!(options.density > 0 && options.density <= 1))
    throw Error(str_cat("plan search: density ", options.density, " is not in (0, 1]"));
  LAMINA_CHECK(options.resolution >= 1, "search_plan: resolution ", options.resolution);
  if (options.kv_heads != 0 && (options.kv_heads < 0 || problem.heads % options.kv_heads != 0))
    throw Error(str_cat("plan search: ", problem.heads, " query heads per layer do not split into ", options.kv_heads,
                        " KV heads"));
  if (options.charge == DensityCharge::kv_group) {
    if (options.kv_heads == 0)
      throw Error("plan search: the kv-group charge needs the model's KV heads per layer");
    if (options.measure != DensityMeasure::kv_cache)
      throw Error(str_cat("plan search: the kv-group charge budgets the KV cache; the density measure must be "
                          "kv-cache, not ",
                          density_measure_name(options.measure)));
  }
  // The candidate grid has its sink-only rule; a layer may go down to it, so a budget below it
  // is the one thing no search can meet.
}

}  // namespace

SearchResult search_plan(const SearchProblem& problem, const SearchOptions& options) {
  check_problem(problem, options);
  const Solver solver(problem, options);
  const auto total_loss = [&](const Solution& solution) {
    double total = 0;
    for (size_t n = 0; n < problem.lengths.size(); ++n) total += solver.loss(solution, n);
    return total;
  };

  Solution best = solver.solve(0);
  double multiplier = 0;
  if (!best.found)
    throw Error(str_cat("plan search: no plan fits density ", options.density, " at length ",
                        problem.lengths[solver.primary()],
                        ": every head at the sparsest candidate rule already takes more"));
  if (!solver.fits(best)) {
    // The other lengths' budgets: raise mu until they fit, then bisect for the smallest such mu,
    // keeping the fitting plan of least ΔL met on the way.
    double scale = 1e-12;
    for (double loss : problem.loss) scale = std::max(scale, std::abs(loss));
    double low = 0, high = scale;
    Solution fitting;
    for (int doubling = 0; doubling < 200; ++doubling, high *= 4) {
      fitting = solver.solve(high);
      if (solver.fits(fitting)) break;
    }
    if (!solver.fits(fitting))
      throw Error(str_cat("plan search: no plan fits density ", options.density, " at every length at once"));
    best = fitting;
    multiplier = high;
    for (int step = 0; step < 40; ++step) {
      const double middle = 0.5 * (low + high);
      Solution candidate = solver.solve(middle);
      if (solver.fits(candidate)) {
        high = middle;
        if (total_loss(candidate) < total_loss(best)) {
          best = std::move(candidate);
          multiplier = middle;
        }
      } else {
        low = middle;
      }
    }
  }

  SearchResult result;
  std::vector<std::vector<ElasticRule>> rules(size_t(problem.layers));
  for (int64_t layer = 0; layer < problem.layers; ++layer)
    for (int64_t head = 0; head < problem.heads; ++head)
      rules[size_t(layer)].push_back(problem.candidates[best.assignment[size_t(layer * problem.heads + head)]]);
  result.plan = MoaPlan(std::move(rules));
  for (size_t n = 0; n < problem.lengths.size(); ++n) {
    result.loss.push_back(solver.loss(best, n));
    result.density.push_back(result.plan.density(problem.lengths[n], options.measure));
    if (options.kv_heads > 0)
      result.kv_fraction.push_back(result.plan.kv_cache_fraction(problem.lengths[n], options.kv_heads));
  }
  result.total_loss = total_loss(best);
  result.multiplier = multiplier;
  return result;
}

std::vector<double> plan_loss(const InfluenceProfile& profile, const std::vector<int64_t>& lengths, const MoaPlan& plan) {
  LAMINA_CHECK(plan.layers() == profile.layers && plan.heads() == profile.heads, "plan_loss: a plan of ",
               plan.layers(), " x ", plan.heads(), " heads for a profile of ", profile.layers, " x ", profile.heads);
  std::vector<double> losses;
  for (int64_t length : lengths) {
    const InfluenceLevel& level = profile.level(length);
    double total = 0;
    for (int64_t layer = 0; layer < plan.layers(); ++layer)
      for (int64_t head = 0; head < plan.heads(); ++head) total += level.rule_loss(layer, head, plan.rule(layer, head));
    losses.push_back(total);
  }
  return losses;
}

}  // namespace lamina::sparse
