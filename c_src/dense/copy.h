// Strided copies with type conversion (the Copy op of unary(), copy_into()).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "nx_quant/dense_ops.h"

namespace nx_quant::dense::detail {

// Writes `in` (iterated over `shape`) converted to out_type (as_type's rules; same type: the
// bits) to out elements `out_offset + sum(i_k * out_strides[k])`. Arguments already validated.
void copy_strided(const Shape& shape, const View& in, Type out_type, void* out, size_t out_count,
                  int64_t out_offset, const std::vector<int64_t>& out_strides, int threads);

}  // namespace nx_quant::dense::detail
