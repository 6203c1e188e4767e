// The optimizer kernels compiled for the neon instruction set (flags: CMakeLists.txt).
// Everything here lives in namespace adamcore::neon; the math is in kernels.inl.
#define ADAMCORE_NS neon
#include "vec/vec_scalar.h"
#include "vec/vec_neon.h"

namespace adamcore::neon {
using Vec = VecNeon;
using VecF64 = VecNeonF64;
}

#include "kernels.inl"
#include "norm.inl"
