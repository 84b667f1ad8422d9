// Camera frame -> model input, on the GPU, so a frame crosses the bus once
// (as camera bytes) and never as floats.
//
// One thread per output pixel: crop to the region of interest, convert the
// camera's pixel format to the model's channels, resample with a triangle
// (tent) filter whose support widens with the downscaling factor (the
// `image` crate's FilterType::Triangle, which the training data goes
// through), then apply the model's input scaling `a[ch] * x + b[ch]` to x in
// [0, 1]. The Rust reference is `cpu_fwd` of the op in src/gpu/preprocess.rs;
// both evaluate the same formula in the same order, in f32.
//
// Formats: 0 = GREY (8 bit), 1 = YUYV (4:2:2, Y0 U Y1 V, full range, JFIF
// coefficients), 2 = RGB24 (Rec. 709 luma for one channel). Output: f32 [D, R, C], D = 1 or 3.

#include "common.cuh"

#define PRE_THREADS 256

namespace gcm {

// The taps of one output coordinate along one axis.
struct Axis {
    int left, right;  // input indices left..right-1
    float centre;     // input coordinate of the output pixel's centre
    float sratio;     // max(1, in/out): the filter's widening
};

__device__ __forceinline__ Axis axis(int o, int in_size, int out_size) {
    Axis a;
    const float ratio = (float)in_size / (float)out_size;
    a.sratio = ratio < 1.0f ? 1.0f : ratio;
    const float support = a.sratio;
    const float centre = ((float)o + 0.5f) * ratio;
    int left = (int)floorf(centre - support);
    left = min(max(left, 0), in_size - 1);
    int right = (int)ceilf(centre + support);
    right = min(max(right, left + 1), in_size);
    a.left = left;
    a.right = right;
    a.centre = centre - 0.5f;
    return a;
}

__device__ __forceinline__ float tap(const Axis& a, int i) {
    const float x = fabsf(((float)i - a.centre) / a.sratio);
    return x < 1.0f ? 1.0f - x : 0.0f;
}

// The model channels of camera pixel (x, y), in 0..255 (D = 1 or 3, known
// at compile time so that v stays in registers).
template <int D>
__device__ __forceinline__ void fetch(const uint8_t* __restrict__ src, int format,
                                      uint64_t stride, int x, int y, float (&v)[3]) {
    const uint8_t* row = src + (uint64_t)y * stride;
    if (format == 0) {
        const float g = (float)row[x];
        v[0] = g;
        v[1] = g;
        v[2] = g;
    } else if (format == 1) {
        const float yy = (float)row[2 * x];
        if (D == 1) {
            v[0] = yy;
            return;
        }
        const uint8_t* pair = row + 4 * (x >> 1);
        const float u = (float)pair[1] - 128.0f, w = (float)pair[3] - 128.0f;
        v[0] = fminf(fmaxf(yy + 1.402f * w, 0.0f), 255.0f);
        v[1] = fminf(fmaxf(yy - 0.344136f * u - 0.714136f * w, 0.0f), 255.0f);
        v[2] = fminf(fmaxf(yy + 1.772f * u, 0.0f), 255.0f);
    } else {
        const uint8_t* p = row + 3 * x;
        if (D == 1) {
            // Rec. 709 luma, the image crate's to_luma8() before its rounding.
            v[0] = 0.2126f * (float)p[0] + 0.7152f * (float)p[1] + 0.0722f * (float)p[2];
            return;
        }
        v[0] = (float)p[0];
        v[1] = (float)p[1];
        v[2] = (float)p[2];
    }
}

template <int D>
__device__ void preprocess(const uint8_t* __restrict__ src, int format, uint64_t stride,
                           int roi_x, int roi_y, int roi_w, int roi_h, int rows, int cols,
                           float a0, float a1, float a2, float b0, float b1, float b2,
                           float* __restrict__ out) {
    const uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (uint64_t)rows * cols) return;
    const int oy = (int)(i / cols), ox = (int)(i % cols);
    const Axis ay = axis(oy, roi_h, rows);
    const Axis ax = axis(ox, roi_w, cols);
    float sy = 0.0f, sx = 0.0f;
    for (int y = ay.left; y < ay.right; ++y) sy += tap(ay, y);
    for (int x = ax.left; x < ax.right; ++x) sx += tap(ax, x);
    float acc[3] = {0.0f, 0.0f, 0.0f};
    for (int y = ay.left; y < ay.right; ++y) {
        const float wy = tap(ay, y) / sy;
        float row[3] = {0.0f, 0.0f, 0.0f};
        for (int x = ax.left; x < ax.right; ++x) {
            const float wx = tap(ax, x) / sx;
            float v[3];
            fetch<D>(src, format, stride, roi_x + x, roi_y + y, v);
#pragma unroll
            for (int c = 0; c < D; ++c) row[c] += wx * v[c];
        }
#pragma unroll
        for (int c = 0; c < D; ++c) acc[c] += wy * row[c];
    }
    const float a[3] = {a0, a1, a2}, b[3] = {b0, b1, b2};
    const uint64_t plane = (uint64_t)rows * cols;
#pragma unroll
    for (int c = 0; c < D; ++c) out[c * plane + i] = a[c] * (acc[c] / 255.0f) + b[c];
}

}  // namespace gcm

extern "C" __global__ void __launch_bounds__(PRE_THREADS)
    gcm_preprocess(const uint8_t* src, int format, uint64_t stride, int roi_x, int roi_y,
                   int roi_w, int roi_h, int rows, int cols, int channels, float a0, float a1,
                   float a2, float b0, float b1, float b2, float* out) {
    if (channels == 1) {
        gcm::preprocess<1>(src, format, stride, roi_x, roi_y, roi_w, roi_h, rows, cols, a0, a1,
                           a2, b0, b1, b2, out);
    } else {
        gcm::preprocess<3>(src, format, stride, roi_x, roi_y, roi_w, roi_h, rows, cols, a0, a1,
                           a2, b0, b1, b2, out);
    }
}
