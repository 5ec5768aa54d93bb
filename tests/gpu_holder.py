"""A stand-in GPU job for tests/test_gpu_real.py and the capture of tests/fixtures/gpu/.

    python3 tests/gpu_holder.py BYTES

Holds BYTES of GPU memory and keeps the GPU busy with matrix products until its standard input
closes; prints "ready" once both are true.  Needs torch with CUDA (any version).
"""

from __future__ import annotations

import select
import sys


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device", flush=True)
        return 1
    held = torch.ones(int(sys.argv[1]), dtype=torch.uint8, device="cuda")
    a = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    print("ready", flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:
        for _ in range(20):
            a = (a @ a).clamp_(-1.0, 1.0)
        torch.cuda.synchronize()
    return int(held[0].item()) - 1


if __name__ == "__main__":
    sys.exit(main())
