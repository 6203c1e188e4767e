// The optimizer kernels compiled for the scalar instruction set (flags: CMakeLists.txt).
// Everything here lives in namespace adamcore::scalar; the math is in kernels.inl.
#define ADAMCORE_NS scalar
#include "vec/vec_scalar.h"

namespace adamcore::scalar {
using Vec = VecScalar;
using VecF64 = VecScalarF64;
}

#include "kernels.inl"
#include "norm.inl"
