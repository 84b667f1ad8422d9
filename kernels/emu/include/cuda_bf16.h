// Stand-in for CUDA's cuda_bf16.h in the host emulation (see cuda_emu.h):
// the bfloat16 type as storage and its conversions, round-to-nearest-even as
// __float2bfloat16_rn is. Our kernels compute in float, so no arithmetic.
#pragma once

#include <stdint.h>
#include <string.h>

struct __nv_bfloat16 {
    uint16_t x;
};

inline float __bfloat162float(__nv_bfloat16 h) {
    const uint32_t bits = (uint32_t)h.x << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    __nv_bfloat16 out;
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        out.x = 0x7fffu;  // NaN (CUDA's canonical one)
    } else {
        out.x = (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    }
    return out;
}
