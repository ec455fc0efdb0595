/* The work around the model in compiled code: the letterbox and the post-processing of detector.py, with the
 * same arithmetic, so the same tensors and the same detections. Built on the device by native.py (its C
 * compiler, no library); detector.py's numpy code serves where it cannot be built.
 *
 * Compile with -ffp-contract=off and without -ffast-math: every float operation must round as numpy's does.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* ------------------------------------------------------------------------------------------------------------
 * Letterbox: OpenCV's INTER_LINEAR for 8-bit RGB, written divided by 255 into the model's float input tensor.
 * OpenCV's fixed point: each needed source row is interpolated horizontally with 11-bit weights and shifted
 * right by 4; two such rows are combined with 11-bit weights, each product shifted right by 16, plus 2,
 * shifted right by 2. The taps and weights come from detector._linear_taps.
 * ------------------------------------------------------------------------------------------------------------ */

/* One source row interpolated horizontally into three planes (R, G, B) of `width` values. */
static void horizontal(const uint8_t *line, int64_t width, const int32_t *left_byte, const int32_t *right_byte,
                       const int32_t *left_weight, const int32_t *right_weight, int32_t *row) {
    int32_t *red = row, *green = row + width, *blue = row + 2 * width;
    for (int64_t x = 0; x < width; x++) {
        const uint8_t *p = line + left_byte[x], *q = line + right_byte[x];
        const int32_t a = left_weight[x], b = right_weight[x];
        red[x] = (p[0] * a + q[0] * b) >> 4;
        green[x] = (p[1] * a + q[1] * b) >> 4;
        blue[x] = (p[2] * a + q[2] * b) >> 4;
    }
}

/* `source`: (source rows, source_width, 3) uint8, C order. `out`: the picture area of a CHW float tensor,
 * `plane` and `stride` floats apart between channels and rows. `rows`: scratch space for 6 * width values. */
void letterbox_linear(const uint8_t *source, int64_t source_width, float *out, int64_t plane, int64_t stride,
                      int64_t height, int64_t width, const int32_t *left_byte, const int32_t *right_byte,
                      const int32_t *left_weight, const int32_t *right_weight, const int64_t *top_row,
                      const int64_t *bottom_row, const int32_t *top_weight, const int32_t *bottom_weight,
                      int32_t *rows) {
    int32_t *upper = rows, *lower = rows + 3 * width, *spare;
    int64_t upper_row = -1, lower_row = -1, row;
    const int64_t line = source_width * 3;
    for (int64_t y = 0; y < height; y++) {
        if (top_row[y] == lower_row) { /* the previous output row's lower source row is this one's upper */
            spare = upper, upper = lower, lower = spare;
            row = upper_row, upper_row = lower_row, lower_row = row;
        }
        if (upper_row != top_row[y]) {
            horizontal(source + top_row[y] * line, width, left_byte, right_byte, left_weight, right_weight, upper);
            upper_row = top_row[y];
        }
        const int32_t *second = upper;
        if (bottom_row[y] != top_row[y]) {
            if (lower_row != bottom_row[y]) {
                horizontal(source + bottom_row[y] * line, width, left_byte, right_byte, left_weight, right_weight,
                           lower);
                lower_row = bottom_row[y];
            }
            second = lower;
        }
        const int32_t b0 = top_weight[y], b1 = bottom_weight[y];
        for (int64_t channel = 0; channel < 3; channel++) {
            const int32_t *s0 = upper + channel * width, *s1 = second + channel * width;
            float *target = out + channel * plane + y * stride;
            for (int64_t x = 0; x < width; x++)
                target[x] = (float)((((s0[x] * b0) >> 16) + ((s1[x] * b1) >> 16) + 2) >> 2) / 255.0f;
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * Post-processing: Ultralytics' non_max_suppression and scale_boxes in float32, as detector.Detector.postprocess
 * computes them: best class per box (the first on a tie), strict confidence threshold, at most `max_candidates`
 * by score, class offsets of `class_offset` px, greedy NMS in order of score (ties: the earlier box first) with
 * the float IoU compared to the double threshold, boxes shifted by the padding, divided by the gain, clipped.
 * ------------------------------------------------------------------------------------------------------------ */

typedef struct {
    float score;
    int64_t index;
} candidate_t;

static int by_score(const void *a, const void *b) {
    const candidate_t *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

/* `prediction`: (4 + classes, boxes) float32, C order. Scratch space for `boxes` entries each: `order`, `label`,
 * `corners` (5 floats: x1, y1, x2, y2, area), `removed`. Writes up to `max_detections` detections (4 box values,
 * class, score) and the top candidate score (NaN when a score is NaN, as numpy's max); returns how many. */
int64_t postprocess(const float *prediction, int64_t classes, int64_t boxes, float confidence, double iou,
                    int64_t max_candidates, int64_t max_detections, float class_offset, float left, float top,
                    float gain_x, float gain_y, float width, float height, candidate_t *order, int64_t *label,
                    float *corners, uint8_t *removed, float *out_boxes, int64_t *out_classes, float *out_scores,
                    float *top_score) {
    const float *scores = prediction + 4 * boxes;
    float *x1 = corners, *y1 = corners + boxes, *x2 = y1 + boxes, *y2 = x2 + boxes, *area = y2 + boxes;
    float highest = -INFINITY;
    int64_t count = 0;
    for (int64_t j = 0; j < boxes; j++) {
        int64_t best = 0;
        float value = scores[j];
        for (int64_t c = 1; c < classes && !isnan(value); c++) {
            const float other = scores[c * boxes + j];
            if (isnan(other) || other > value) value = other, best = c;
        }
        label[j] = best;
        if (isnan(value) || isnan(highest)) highest = NAN;
        else if (value > highest) highest = value;
        if (value > confidence) order[count].score = value, order[count].index = j, count++;
    }
    *top_score = highest + 0.0f; /* -0.0 counts as 0.0, as in detector.postprocess */
    if (count == 0) return 0;
    qsort(order, (size_t)count, sizeof(candidate_t), by_score);
    if (count > max_candidates) count = max_candidates;
    for (int64_t k = 0; k < count; k++) {
        const int64_t j = order[k].index;
        const float half_w = prediction[2 * boxes + j] / 2.0f, half_h = prediction[3 * boxes + j] / 2.0f;
        x1[k] = prediction[j] - half_w, y1[k] = prediction[boxes + j] - half_h;
        x2[k] = prediction[j] + half_w, y2[k] = prediction[boxes + j] + half_h;
        if (classes > 1) { /* boxes of different classes never overlap */
            const float offset = (float)label[j] * class_offset;
            x1[k] += offset, y1[k] += offset, x2[k] += offset, y2[k] += offset;
        }
        area[k] = (x2[k] - x1[k]) * (y2[k] - y1[k]);
        removed[k] = 0;
    }
    int64_t kept = 0;
    for (int64_t k = 0; k < count && kept < max_detections; k++) {
        if (removed[k]) continue;
        const int64_t j = order[k].index;
        const float half_w = prediction[2 * boxes + j] / 2.0f, half_h = prediction[3 * boxes + j] / 2.0f;
        float *box = out_boxes + 4 * kept;
        box[0] = ((prediction[j] - half_w) - left) / gain_x;
        box[1] = ((prediction[boxes + j] - half_h) - top) / gain_y;
        box[2] = ((prediction[j] + half_w) - left) / gain_x;
        box[3] = ((prediction[boxes + j] + half_h) - top) / gain_y;
        for (int v = 0; v < 4; v++) { /* numpy's maximum(box, 0), then minimum(x, width) and minimum(y, height) */
            const float limit = v % 2 ? height : width;
            if (box[v] <= 0.0f) box[v] = 0.0f; /* -0.0 too, as numpy's maximum gives */
            if (box[v] > limit) box[v] = limit;
        }
        out_classes[kept] = label[j];
        out_scores[kept] = order[k].score;
        kept++;
        for (int64_t m = k + 1; m < count; m++) {
            if (removed[m]) continue;
            float w = (x2[k] < x2[m] ? x2[k] : x2[m]) - (x1[k] > x1[m] ? x1[k] : x1[m]);
            float h = (y2[k] < y2[m] ? y2[k] : y2[m]) - (y1[k] > y1[m] ? y1[k] : y1[m]);
            if (w <= 0.0f) w = 0.0f;
            if (h <= 0.0f) h = 0.0f;
            const float inter = w * h;
            const float overlap = inter / ((area[k] + area[m]) - inter); /* 0 / 0 (two empty boxes): NaN */
            if ((double)overlap > iou) removed[m] = 1;
        }
    }
    return kept;
}
