// Host emulation of the CUDA C++ our kernels (kernels/*.cu) use, so that the
// unmodified sources compile with the host C++ compiler and run on the CPU
// (crate gcm-cuda-emu, src/lib.rs documents the model and its limits).
//
// Execution model: a launch runs its blocks one after the other on the
// calling OS thread; the threads of a block are cooperative fibers
// (ucontext) that switch only at __syncthreads and at warp intrinsics, in a
// fixed order, so every run is deterministic. Hence:
// - `__shared__` is `static thread_local`: one copy per OS thread, and one
//   OS thread runs one block at a time, so each block has its own (it is not
//   cleared between blocks, where a GPU leaves it undefined);
// - threadIdx & co. are thread-local variables the scheduler sets before it
//   resumes a fiber;
// - __syncthreads releases when every thread of the block that has not
//   returned waits at it; a warp intrinsic completes when every lane its
//   mask names has reached the same intrinsic, and fails the launch when a
//   named lane has returned, waits elsewhere or does not exist.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <string>
#include <type_traits>
#include <utility>

#include "cuda_bf16.h"
#include "cuda_fp16.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
// __restrict__ is a keyword of GCC and Clang already.

struct dim3 {
    unsigned x, y, z;
};
typedef dim3 uint3;

namespace gcm_emu {

// What the builtins of the running fiber read.
struct Current {
    dim3 thread_idx, block_idx, block_dim, grid_dim;
};
extern thread_local Current current;

// The calling fiber waits for its warp; returns the bits of lane
// (lane ^ lane_mask)'s value.
uint64_t shfl_xor(uint64_t bits, unsigned mask, int lane_mask, int width);
// The calling fiber waits for its block.
void syncthreads();

// One kernel of a compilation unit: its name, its parameter types as codes
// (see `code`), and a trampoline that calls it with CUDA's argument
// convention (an array of pointers to the argument values).
typedef void (*AnyFn)();
struct Kernel {
    const char* name;
    const char* signature;
    void (*invoke)(AnyFn, void**);
    AnyFn fn;
};

// Type codes, as the Rust side writes them: f32 f, f64 d, f16 h, bf16 b,
// integers i/I (signed 32/64 bits), u/U (unsigned 32/64), B (u8); a pointer
// is `p` and its pointee's code (const or not).
template <typename T> struct Code {
    static std::string get() {
        static_assert(std::is_integral<T>::value, "a kernel parameter type with no code");
        const bool s = std::is_signed<T>::value;
        switch (sizeof(T)) {
        case 1: return s ? "c" : "B";
        case 4: return s ? "i" : "u";
        case 8: return s ? "I" : "U";
        default: return "?";
        }
    }
};
template <> struct Code<float> { static std::string get() { return "f"; } };
template <> struct Code<double> { static std::string get() { return "d"; } };
template <> struct Code<__half> { static std::string get() { return "h"; } };
template <> struct Code<__nv_bfloat16> { static std::string get() { return "b"; } };
template <typename T> struct Code<T*> {
    static std::string get() { return "p" + Code<typename std::remove_cv<T>::type>::get(); }
};

template <typename... A> const char* signature() {
    static const std::string s = [] {
        std::string out;
        const std::string codes[] = {std::string(), Code<A>::get()...};
        for (size_t i = 1; i < sizeof...(A) + 1; ++i) out += (i > 1 ? "," : "") + codes[i];
        return out;
    }();
    return s.c_str();
}

template <typename... A, size_t... I>
void call(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<A*>(args[I])...);
}

template <typename... A> void invoke(AnyFn fn, void** args) {
    call(reinterpret_cast<void (*)(A...)>(fn), args, std::index_sequence_for<A...>{});
}

template <typename... A> Kernel kernel(const char* name, void (*k)(A...)) {
    return Kernel{name, signature<A...>(), &invoke<A...>, reinterpret_cast<AnyFn>(k)};
}

}  // namespace gcm_emu

// A table entry for kernel NAME (stringified before NAME is macro-expanded,
// so a renamed copy keeps its CUDA name).
#define GCM_EMU_KERNEL(NAME) gcm_emu::kernel(#NAME, NAME)

#define threadIdx (gcm_emu::current.thread_idx)
#define blockIdx (gcm_emu::current.block_idx)
#define blockDim (gcm_emu::current.block_dim)
#define gridDim (gcm_emu::current.grid_dim)

inline void __syncthreads() { gcm_emu::syncthreads(); }

template <typename T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                  "__shfl_xor_sync of a type over 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    bits = gcm_emu::shfl_xor(bits, mask, lane_mask, width);
    T out;
    memcpy(&out, &bits, sizeof(T));
    return out;
}

inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// IEEE single operations without contraction into an FMA (the emulation is
// compiled with -ffp-contract=off, so plain operators do the same).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }

// CUDA's integer min/max overloads (fminf & co. come from math.h, with the
// same NaN rules as CUDA's).
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
