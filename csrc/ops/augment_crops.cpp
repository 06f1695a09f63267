// Schema of proxynas_fast::augment_crops, the image store's train-time augmentation of a batch in one pass.
//
// augment_crops(images uint8 [B, H, W, 3], boxes float64 [B, 4] (top, left, height, width),
//               flip bool [B], factors float64 [B, 4] (brightness, contrast, saturation, hue shift),
//               order int64 [B, 4] (colour op indices 0..3 in the order each image applies them),
//               size, scale float32 [3], shift float32 [3]) -> float32 [B, 3, size, size]
// Each image's box resized bilinearly to size x size with pixel centres aligned and the box's edge pixels
// repeated at its borders, mirrored where flip is set, the four colour ops applied in the image's order on
// [0, 255] levels (each clamped), then `x * scale - shift` per channel: loaders/batch_augment.py's tensor-op
// path (resample_boxes, color_jitter, normalize) fused.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(proxynas_fast, m) {
  m.def("augment_crops(Tensor images, Tensor boxes, Tensor flip, Tensor factors, Tensor order, int size, "
        "Tensor scale, Tensor shift) -> Tensor");
}
