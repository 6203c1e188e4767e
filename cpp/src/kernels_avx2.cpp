// The optimizer kernels compiled for the avx2 instruction set (flags: CMakeLists.txt).
// Everything here lives in namespace adamcore::avx2; the math is in kernels.inl.
#define ADAMCORE_NS avx2
#include "vec/vec_scalar.h"
#include "vec/vec_avx2.h"

namespace adamcore::avx2 {
using Vec = VecAvx2;
using VecF64 = VecAvx2F64;
}

#include "kernels.inl"
#include "norm.inl"
