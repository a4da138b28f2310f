// Byte copies between the host and CUDA devices, all on the device's compute stream.
//
// Copies to the host wait for the stream (and so for every kernel queued before them); copies
// from the host return once the host buffer may be reused. Transfers of kStagedBytes or more
// go through two pinned buffers per device, so that the CPU copy of one chunk overlaps the DMA
// of the other; smaller ones go straight from pageable memory.
//
// No CUDA types here: tensor/tensor.cpp includes this in every CUDA build.
#pragma once

#include <cstddef>

#include "tensor/tensor.h"

namespace lamina::cuda {

inline constexpr size_t kStagedBytes = size_t(4) << 20;

void copy_to_device(void* device_dst, const void* host_src, size_t bytes, int device);
void copy_to_host(void* host_dst, const void* device_src, size_t bytes, int device);
void copy_within_device(void* dst, const void* src, size_t bytes, int device);
// dst on dst_device, src on src_device; waits for src's stream, copies on dst's, and makes src's
// stream wait for the copy (so that src's block may be freed and reused at once).
void copy_between_devices(void* dst, int dst_device, const void* src, int src_device, size_t bytes);
void fill_bytes(void* device_dst, int byte, size_t bytes, int device);

// A CPU tensor with t's shape, strides and values: the bytes t's view spans, copied to the host.
Tensor host_copy_of_span(const Tensor& t);

}  // namespace lamina::cuda
