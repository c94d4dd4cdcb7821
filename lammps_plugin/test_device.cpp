// Unit test of choose_device (run by tests/test_lammps_plugin.py): exits non-zero on a failure.
#include "device.h"

#include <cstdio>

static int failures = 0;

static void expect(bool ok, const char *what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

static bool throws(int local_rank, int count) {
  try {
    nequip::choose_device(local_rank, count);
  } catch (const std::runtime_error &) {
    return true;
  }
  return false;
}

int main() {
  expect(nequip::choose_device(0, 1) == 0, "one GPU, rank 0");
  expect(nequip::choose_device(3, 4) == 3, "four GPUs, rank 3 gets GPU 3");
  expect(nequip::choose_device(5, 4) == 1, "more ranks than GPUs share round-robin");
  expect(throws(0, 0), "no GPU is an error");
  expect(throws(-1, 2), "negative rank is an error");
  if (failures == 0) std::printf("device tests passed\n");
  return failures == 0 ? 0 : 1;
}
