// Camera frame -> model input on the GPU: the CUDA backend of the
// preprocessing contract (src/preprocess/mod.rs), whose CPU backend is the
// reference. A frame crosses the bus once, as camera bytes.
//
// gcm_preprocess: one thread per output pixel. Crop to the region of
// interest, convert each camera pixel to the model's channels as 8-bit
// values, resize with the `image` crate's Triangle filter exactly as it does
// (a vertical pass in f32, then a horizontal pass, then clamp and round half
// away from zero), and write the 8-bit model input [D, R, C].
// gcm_scale: the 8-bit input to the network input, a[d] * (x / 255) + b[d].
//
// Every float operation is the CPU's in the CPU's order, with the rounding
// intrinsics (__fmul_rn, __fadd_rn, __fdiv_rn) so that nvcc cannot contract
// a multiply and an add into an FMA: the results are bit for bit the CPU's.
//
// Formats: 0 = GREY, 1 = YUYV (BT.601 limited range, integer conversion),
// 2 = RGB24. Grey models take the luma of colour pixels as the `image`
// crate's to_luma8 computes it.

#include "common.cuh"

#define PRE_THREADS 256
namespace gcm {

// The taps of one output coordinate along one axis: input indices
// left..left+count-1, weights normalised as the image crate normalises them.
struct Axis {
    int left, count;
    float centre, sratio, sum;
};

__device__ __forceinline__ float triangle(float x) {
    const float a = fabsf(x);
    return a < 1.0f ? __fsub_rn(1.0f, a) : 0.0f;
}

__device__ __forceinline__ float raw_weight(const Axis& a, int i) {
    return triangle(__fdiv_rn(__fsub_rn((float)(a.left + i), a.centre), a.sratio));
}

// Tap i's weight (recomputed where it is used: the same operations give the
// same bits, and no array of taps limits the downscaling factor).
__device__ __forceinline__ float weight(const Axis& a, int i) {
    return __fdiv_rn(raw_weight(a, i), a.sum);
}

__device__ __forceinline__ Axis axis(int o, int in_size, int out_size) {
    Axis a;
    const float ratio = __fdiv_rn((float)in_size, (float)out_size);
    a.sratio = ratio < 1.0f ? 1.0f : ratio;
    const float centre = __fmul_rn(__fadd_rn((float)o, 0.5f), ratio);
    long long left = (long long)floorf(__fsub_rn(centre, a.sratio));
    left = left < 0 ? 0 : (left > in_size - 1 ? in_size - 1 : left);
    long long right = (long long)ceilf(__fadd_rn(centre, a.sratio));
    right = right < left + 1 ? left + 1 : (right > in_size ? in_size : right);
    a.centre = __fsub_rn(centre, 0.5f);
    a.left = (int)left;
    a.count = (int)(right - left);
    a.sum = 0.0f;
    for (int i = 0; i < a.count; ++i) a.sum = __fadd_rn(a.sum, raw_weight(a, i));
    return a;
}

__device__ __forceinline__ int clamp255(int x) { return x < 0 ? 0 : (x > 255 ? 255 : x); }

// The model channels of camera pixel (x, y) as 8-bit values (D = 1 or 3).
template <int D>
__device__ __forceinline__ void fetch(const uint8_t* __restrict__ src, int format,
                                      uint64_t stride, int x, int y, int (&v)[3]) {
    const uint8_t* row = src + (uint64_t)y * stride;
    int r, g, b;
    if (format == 0) {
        v[0] = v[1] = v[2] = row[x];
        return;
    } else if (format == 1) {
        // BT.601 limited range, as UVC cameras send it; the pair shares U, V.
        const uint8_t* quad = row + 4 * (x >> 1);
        const int c = max((int)row[2 * x] - 16, 0);
        const int d = (int)quad[1] - 128, e = (int)quad[3] - 128;
        r = clamp255((298 * c + 409 * e + 128) >> 8);
        g = clamp255((298 * c - 100 * d - 208 * e + 128) >> 8);
        b = clamp255((298 * c + 516 * d + 128) >> 8);
    } else {
        const uint8_t* p = row + 3 * x;
        r = p[0];
        g = p[1];
        b = p[2];
    }
    if (D == 1) {
        // The image crate's to_luma8 (src/preprocess/convert.rs, `luma`).
        const float q = 1.0f / 255.0f;
        const float y = __fadd_rn(__fadd_rn(__fmul_rn(__fmul_rn((float)r, q), 0.21264784f),
                                            __fmul_rn(__fmul_rn((float)g, q), 0.7151792f)),
                                  __fmul_rn(__fmul_rn((float)b, q), 0.07217304f));
        v[0] = (int)roundf(fminf(fmaxf(__fmul_rn(255.0f, y), 0.0f), 255.0f));
    } else {
        v[0] = r;
        v[1] = g;
        v[2] = b;
    }
}

template <int D>
__device__ void preprocess(const uint8_t* __restrict__ src, int format, uint64_t stride,
                           int roi_x, int roi_y, int roi_w, int roi_h, int rows, int cols,
                           uint8_t* __restrict__ out) {
    const uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (uint64_t)rows * cols) return;
    const int oy = (int)(i / cols), ox = (int)(i % cols);
    const Axis ay = axis(oy, roi_h, rows);
    const Axis ax = axis(ox, roi_w, cols);
    float acc[3] = {0.0f, 0.0f, 0.0f};
    for (int k = 0; k < ax.count; ++k) {
        // The vertical pass's value at input column ax.left + k.
        float col[3] = {0.0f, 0.0f, 0.0f};
        const float wx = weight(ax, k);
        for (int j = 0; j < ay.count; ++j) {
            const float wy = weight(ay, j);
            int v[3];
            fetch<D>(src, format, stride, roi_x + ax.left + k, roi_y + ay.left + j, v);
#pragma unroll
            for (int c = 0; c < D; ++c) col[c] = __fadd_rn(col[c], __fmul_rn((float)v[c], wy));
        }
#pragma unroll
        for (int c = 0; c < D; ++c) acc[c] = __fadd_rn(acc[c], __fmul_rn(col[c], wx));
    }
    const uint64_t plane = (uint64_t)rows * cols;
#pragma unroll
    for (int c = 0; c < D; ++c) {
        const float t = fminf(fmaxf(acc[c], 0.0f), 255.0f);
        out[c * plane + i] = (uint8_t)roundf(t);
    }
}

}  // namespace gcm

extern "C" __global__ void __launch_bounds__(PRE_THREADS)
    gcm_preprocess(const uint8_t* src, int format, uint64_t stride, int roi_x, int roi_y,
                   int roi_w, int roi_h, int rows, int cols, int channels, uint8_t* out) {
    if (channels == 1) {
        gcm::preprocess<1>(src, format, stride, roi_x, roi_y, roi_w, roi_h, rows, cols, out);
    } else {
        gcm::preprocess<3>(src, format, stride, roi_x, roi_y, roi_w, roi_h, rows, cols, out);
    }
}

// out[d, p] = a[d] * (x[d, p] / 255) + b[d] for n = D * plane values.
extern "C" __global__ void __launch_bounds__(PRE_THREADS)
    gcm_scale(const uint8_t* x, uint64_t n, uint64_t plane, float a0, float a1, float a2,
              float b0, float b1, float b2, float* out) {
    const uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const uint64_t d = i / plane;
    const float a = d == 0 ? a0 : (d == 1 ? a1 : a2);
    const float b = d == 0 ? b0 : (d == 1 ? b1 : b2);
    out[i] = __fadd_rn(__fmul_rn(a, __fdiv_rn((float)x[i], 255.0f)), b);
}
