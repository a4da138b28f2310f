// The 4-bit ops on the GPU against their CPU twins (ops/quant4.h): dequantize_4bit and the decoded
// double-quantized scales bit for bit (one f32 multiply per element, one multiply and one add per
// scale, as on the CPU), matmul_4bit through both of its CUDA kernels (the warp-per-feature one
// for at most 4 rows, the tiled one above) and matmul_4bit_input_grad, every output under both
// allocation poisons. Tolerance of the products: 1e-5 relative error over the whole output (f32
// sums in another order; the quantized weight is the same on both sides).
#include "autograd/functions.h"
#include "autograd/quant4.h"
#include "cuda_cases.h"
#include "ops/quant4.h"

using namespace lamina;
using namespace lamina::testing;
using namespace lamina::testing::gpu;
using ops::Quant4Format;

TEST_CASE("dequantize_4bit and the decoded scales on the GPU equal the CPU bit for bit") {
  Generator generator(2);
  struct Case {
    Shape shape;
    int64_t blocksize;
    Quant4Format format;
    bool double_quant;
  };
  const Case cases[] = {{{3, 37}, 32, Quant4Format::nf4, false},
                        {{300, 130}, 64, Quant4Format::nf4, true},
                        {{65, 129}, 128, Quant4Format::fp4, true},
                        {{7, 512}, 4096, Quant4Format::fp4, false}};
  for (const Case& c : cases) {
    CAPTURE(c.shape);
    const ops::Quantized4Bit cpu = ops::quantize_4bit(randn(c.shape, generator), c.format, c.blocksize, c.double_quant);
    const ops::Quantized4Bit gpu = cpu.to(kCuda);
    // Quantizing a weight that lives on the GPU gives the same codes, on the GPU.
    const ops::Quantized4Bit from_gpu =
        ops::quantize_4bit(ops::to_device(ops::dequantize_4bit(cpu), kCuda), c.format, c.blocksize, c.double_quant);
    CHECK(from_gpu.device() == kCuda);
    for_each_poison([&] {
      CHECK_CLOSE(to_cpu(ops::dequantize_4bit(gpu)), ops::dequantize_4bit(cpu), kExact);
      CHECK_CLOSE(to_cpu(ops::dequantize_4bit_absmax(gpu)), ops::dequantize_4bit_absmax(cpu), kExact);
    });
  }
}

TEST_CASE("matmul_4bit and matmul_4bit_input_grad on the GPU match the CPU") {
  // The GPU computes the f32 product for every row count: the CPU oracle is its f32 product too,
  // not the integer decode product it takes by default for 1..15 rows (ops/quant4.h).
  struct F32DecodeProduct {
    F32DecodeProduct() { ops::set_quant4_decode_product(ops::Quant4DecodeProduct::f32); }
    ~F32DecodeProduct() { ops::set_quant4_decode_product(ops::Quant4DecodeProduct::automatic); }
  } f32_decode_product;
  Generator generator(3);
  struct Case {
    Shape x_shape;
    int64_t out, in, blocksize;
    Quant4Format format;
    bool double_quant;
  };
  const Case cases[] = {
      {{1, 64}, 9, 64, 64, Quant4Format::nf4, true},          // one row: warp per feature
      {{4, 37}, 70, 37, 32, Quant4Format::nf4, false},        // 4 rows, rows starting mid-byte
      {{2, 3, 100}, 300, 100, 64, Quant4Format::fp4, true},   // 6 rows: tiled, partial tiles
      {{130, 257}, 129, 257, 128, Quant4Format::nf4, true},   // several tiles each way
      {{65}, 17, 65, 32, Quant4Format::nf4, false},           // a vector
  };
  for (const Case& c : cases) {
    CAPTURE(c.x_shape);
    CAPTURE(c.out);
    const ops::Quantized4Bit cpu = ops::quantize_4bit(randn({c.out, c.in}, generator), c.format, c.blocksize,
                                                      c.double_quant);
    const ops::Quantized4Bit gpu = cpu.to(kCuda);
    const Tensor x = randn(c.x_shape, generator);
    Shape g_shape = c.x_shape;
    g_shape.back() = c.out;
    const Tensor g = randn(g_shape, generator);
    const Tensor expected_y = ops::matmul_4bit(x, cpu);
    const Tensor expected_dx = ops::matmul_4bit_input_grad(g, cpu);
    for_each_poison([&] {
      const Tensor y = to_cpu(ops::matmul_4bit(mirror(x), gpu));
      CHECK(y.shape() == expected_y.shape());
      CHECK(relative_error(y, expected_y) < 1e-5);
      const Tensor dx = to_cpu(ops::matmul_4bit_input_grad(mirror(g), gpu));
      CHECK(dx.shape() == expected_dx.shape());
      CHECK(relative_error(dx, expected_dx) < 1e-5);
      // bf16 activations: computed in f32 from the same bf16 values, returned as bf16.
      const Tensor x16 = ops::cast(x, DType::bf16);
      const Tensor y16 = to_cpu(ops::matmul_4bit(mirror(x16), gpu));
      CHECK(y16.dtype() == DType::bf16);
      CHECK(relative_error(y16, ops::matmul_4bit(x16, cpu)) < 1e-2);
    });
  }

  // linear_4bit through autograd on the GPU: x's gradient as on the CPU.
  const ops::Quantized4Bit cpu = ops::quantize_4bit(randn({24, 40}, generator), Quant4Format::nf4, 64, true);
  const Tensor x_cpu = randn({6, 40}, generator).set_requires_grad();
  const Tensor x_gpu = ops::to_device(x_cpu.detach(), kCuda).set_requires_grad();
  const Tensor weights = randn({6, 24}, generator);
  sum(mul(linear_4bit(x_cpu, cpu), weights)).backward();
  sum(mul(linear_4bit(x_gpu, cpu.to(kCuda)), mirror(weights))).backward();
  REQUIRE(x_gpu.grad().defined());
  CHECK(relative_error(to_cpu(x_gpu.grad()), x_cpu.grad()) < 1e-5);
}
