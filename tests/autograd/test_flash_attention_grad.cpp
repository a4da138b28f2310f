// The differentiable flash_attention: gradcheck in f64 against central differences on small
// shapes that still span several 64-row tiles (partial, full and skipped ones), for each kind
// of pattern; and the tape's gradients equal the raw backward op's.
#include <random>

#include "autograd/autograd.h"
#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "helpers.h"

using namespace lamina;
using testing::random_tensor;

namespace {

void check_gradients(const AttentionPattern& pattern, int64_t heads, int64_t kv_heads, int64_t queries, int64_t keys,
                     int64_t head_dim, uint64_t seed) {
  Generator gen(seed);
  const Tensor q = random_tensor({1, heads, queries, head_dim}, DType::f64, gen);
  const Tensor k = random_tensor({1, kv_heads, keys, head_dim}, DType::f64, gen);
  const Tensor v = random_tensor({1, kv_heads, keys, head_dim}, DType::f64, gen);
  const autograd::GradcheckResult result = autograd::gradcheck(
      [&](const std::vector<Tensor>& x) { return flash_attention(x[0], x[1], x[2], pattern); }, {q, k, v});
  INFO("max abs err " << result.max_abs_error << ", max rel err " << result.max_rel_error << "; " << result.worst);
  CHECK(result.passed);
}

}  // namespace

TEST_CASE("flash_attention gradcheck: dense, sink + window, documents, block-sparse, additive mask") {
  SUBCASE("dense causal over two query tiles, GQA 2") { check_gradients(AttentionPattern::dense(), 2, 1, 70, 70, 3, 1); }
  SUBCASE("sink 2 + window 5, a cache prefix") { check_gradients(AttentionPattern::sink_window(2, 5), 1, 1, 66, 80, 4, 2); }
  SUBCASE("documents with a one-token document") {
    std::vector<int64_t> ids(75, 0);
    for (size_t j = 0; j < ids.size(); ++j) ids[j] = j < 30 ? 0 : j == 30 ? 1 : 2;
    check_gradients(AttentionPattern::documents(Tensor::from_vector(ids, {75})), 1, 1, 75, 75, 3, 3);
  }
  SUBCASE("block-sparse with rows that see nothing") {
    const Tensor layout = Tensor::from_vector(std::vector<uint8_t>{0, 0, 0, 1, 1, 0, 0, 1, 1}, {1, 3, 3}, DType::boolean);
    check_gradients(AttentionPattern::block_sparse(layout, 32, 32), 2, 2, 70, 70, 3, 4);
  }
  SUBCASE("additive mask, non-causal") {
    AttentionPattern pattern = AttentionPattern::dense(false);
    Generator gen(9);
    pattern.additive_mask = uniform({1, 1, 67, 67}, -1.0, 1.0, gen, DType::f64);
    check_gradients(pattern, 1, 1, 67, 67, 2, 5);
  }
}

TEST_CASE("flash_attention on the tape: backward() gives flash_attention_backward's gradients") {
  Generator gen(12);
  const AttentionPattern pattern = AttentionPattern::sink_window(4, 30);
  Tensor q = random_tensor({1, 4, 100, 64}, DType::f32, gen), k = random_tensor({1, 2, 100, 64}, DType::f32, gen),
         v = random_tensor({1, 2, 100, 64}, DType::f32, gen);
  const Tensor grad_out = random_tensor({1, 4, 100, 64}, DType::f32, gen);
  for (Tensor* t : {&q, &k, &v}) t->set_requires_grad(true);
  const Tensor out = flash_attention(q, k, v, pattern);
  CHECK(out.requires_grad());
  out.backward(grad_out);
  const ops::AttentionResult raw = ops::flash_attention(q.detach(), k.detach(), v.detach(), pattern);
  const ops::AttentionGrads expected = ops::flash_attention_backward(grad_out, q.detach(), k.detach(), v.detach(),
                                                                     raw.out, raw.lse, pattern);
  CHECK_CLOSE(q.grad(), expected.dq, (testing::Tolerance{0, 0}));
  CHECK_CLOSE(k.grad(), expected.dk, (testing::Tolerance{0, 0}));
  CHECK_CLOSE(v.grad(), expected.dv, (testing::Tolerance{0, 0}));
}
