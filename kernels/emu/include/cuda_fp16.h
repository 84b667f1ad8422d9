// Stand-in for CUDA's cuda_fp16.h in the host emulation (see cuda_emu.h):
// the half type as storage and its conversions, round-to-nearest-even as
// __float2half_rn is. Our kernels compute in float, so no arithmetic.
#pragma once

#include <stdint.h>
#include <string.h>

struct __half {
    uint16_t x;
};

inline float __half2float(__half h) {
    const uint32_t sign = (uint32_t)(h.x & 0x8000u) << 16;
    const uint32_t e = (h.x >> 10) & 0x1fu, m = h.x & 0x3ffu;
    uint32_t bits;
    if (e == 0x1f) {
        bits = sign | 0x7f800000u | (m << 13);
    } else if (e == 0) {
        // Zero or subnormal: m * 2^-24, exact in float.
        const float v = (float)m * 5.9604644775390625e-8f;
        memcpy(&bits, &v, 4);
        bits |= sign;
    } else {
        bits = sign | ((e + 112u) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

inline __half __float2half_rn(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    uint32_t h;
    if (ax > 0x7f800000u) {
        h = 0x7fffu;  // NaN (CUDA's canonical one)
    } else if (ax >= 0x477ff000u) {
        h = 0x7c00u;  // 65520 and up round to infinity (65504 is odd)
    } else if (ax >= 0x38800000u) {
        // Normal: rebias the exponent, round the 13 dropped bits to even.
        const uint32_t r = ax - 0x38000000u;
        h = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
    } else if (ax <= 0x33000000u) {
        h = 0;  // at most 2^-25, half of the smallest subnormal: ties to 0
    } else {
        // Subnormal: the value in units of 2^-24, rounded to even.
        const uint32_t e = ax >> 23, mant = (ax & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - e, rem = mant & ((1u << shift) - 1u);
        const uint32_t half = 1u << (shift - 1);
        h = mant >> shift;
        if (rem > half || (rem == half && (h & 1u))) ++h;
    }
    __half out;
    out.x = (uint16_t)(sign | h);
    return out;
}
