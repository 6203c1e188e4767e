// The optimizer kernels compiled for the avx512 instruction set (flags: CMakeLists.txt).
// Everything here lives in namespace adamcore::avx512; the math is in kernels.inl.
#define ADAMCORE_NS avx512
#include "vec/vec_scalar.h"
#include "vec/vec_avx512.h"

namespace adamcore::avx512 {
using Vec = VecAvx512;
using VecF64 = VecAvx512F64;
}

#include "kernels.inl"
#include "norm.inl"
