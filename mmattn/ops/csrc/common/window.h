// Window geometry of 2-D neighbourhood attention, one axis at a time.
//
// Written once, called from the CPU loops and the CUDA kernels, so the arithmetic that the CPU
// tests verify is the arithmetic that the GPU runs.
//
// Coordinates. With dilation d, the positions of an axis of length L split into d "dilation
// groups" (p % d); inside a group, position p has group coordinate p / d and the group holds
// group_length(L, p % d, d) positions. A window of k taps is k consecutive group coordinates.
//   border 'mask'  (clamp == false): the window is centred on the query; taps outside the group
//                  are invalid (excluded from the softmax).
//   border 'clamp' (clamp == true):  NATTEN semantics; the window is shifted to lie inside the
//                  group (needs group_length >= k for every group, i.e. L / d >= k).
#pragma once
#include <cstdint>

#include "macros.h"

namespace mmattn {

MMATTN_HD int64_t group_length(int64_t length, int64_t group, int64_t dilation) {
  return (length - group + dilation - 1) / dilation;
}

// First tap of the window of group coordinate `ig` in a group of `lg` positions.
MMATTN_HD int64_t window_start(int64_t ig, int64_t lg, int64_t kernel, bool clamp) {
  int64_t s = ig - kernel / 2;
  if (clamp) {
    if (s > lg - kernel) s = lg - kernel;
    if (s < 0) s = 0;
  }
  return s;
}

// The window of one query coordinate along one axis.
struct AxisWindow {
  int64_t start;  // first tap, group coordinates (may be negative in 'mask' mode)
  int64_t query;  // the query, group coordinates
  int64_t group;  // dilation group (coordinate % dilation)
  int64_t lg;     // number of positions in the group
};

MMATTN_HD AxisWindow query_window(int64_t i, int64_t length, int64_t kernel, int64_t dilation,
                                  bool clamp) {
  AxisWindow w;
  w.group = i % dilation;
  w.query = i / dilation;
  w.lg = group_length(length, w.group, dilation);
  w.start = window_start(w.query, w.lg, kernel, clamp);
  return w;
}

// Image coordinate of tap `a` of window `w`, or -1 when the tap falls outside the image.
MMATTN_HD int64_t tap_coord(const AxisWindow& w, int64_t a, int64_t dilation) {
  const int64_t g = w.start + a;
  return (g >= 0 && g < w.lg) ? g * dilation + w.group : -1;
}

// Index into the relative-position-bias axis of length 2k-1: (key - query) / d + (k - 1).
MMATTN_HD int64_t rpb_index(const AxisWindow& w, int64_t a, int64_t kernel) {
  return w.start + a - w.query + kernel - 1;
}

// Inverse neighbourhood of key coordinate `p`: the group coordinates [lo, hi] of the queries
// whose window may hold `p` (a superset in 'clamp' mode; test each with inverse_tap).
struct InverseRange {
  int64_t lo, hi;  // candidate queries, group coordinates, inclusive
  int64_t key;     // the key, group coordinates
  int64_t group;
  int64_t lg;
};

MMATTN_HD InverseRange inverse_range(int64_t p, int64_t length, int64_t kernel, int64_t dilation,
                                     bool clamp) {
  InverseRange r;
  r.group = p % dilation;
  r.key = p / dilation;
  r.lg = group_length(length, r.group, dilation);
  const int64_t reach = clamp ? kernel - 1 : kernel / 2;
  r.lo = r.key - reach < 0 ? 0 : r.key - reach;
  r.hi = r.key + reach > r.lg - 1 ? r.lg - 1 : r.key + reach;
  return r;
}

// Tap index at which query `iq` (group coordinates) sees the key of `r`, or -1 if it does not.
MMATTN_HD int64_t inverse_tap(const InverseRange& r, int64_t iq, int64_t kernel, bool clamp) {
  const int64_t a = r.key - window_start(iq, r.lg, kernel, clamp);
  return (a >= 0 && a < kernel) ? a : -1;
}

// Image coordinate of the query with group coordinate `iq` in the group of `r`.
MMATTN_HD int64_t inverse_coord(const InverseRange& r, int64_t iq, int64_t dilation) {
  return iq * dilation + r.group;
}

}  // namespace mmattn
