"""Peak resident memory of one training step (forward + backward), T=100, B=64, I=H=512,
float32: grufast vs PyTorch, each in a fresh process. Usage: python tools/train_memory.py"""

import subprocess
import sys

CODE = {
    "grufast": """
import numpy as np, grufast
gru = grufast.GRU(512, 512).train()
x = np.random.default_rng(0).standard_normal((100, 64, 512), dtype=np.float32)
dy = np.ones((100, 64, 512), np.float32)
import resource; base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
gru(x); gru.backward(dy)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
""",
    "torch": """
import numpy as np, torch
m = torch.nn.GRU(512, 512)
x = torch.from_numpy(np.random.default_rng(0).standard_normal((100, 64, 512), dtype=np.float32))
dy = torch.ones(100, 64, 512)
x.requires_grad_()
import resource; base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
y, _ = m(x); y.backward(dy)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
""",
}


def main() -> None:
    for name, code in CODE.items():
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.split()[-1]
        print(f"{name:8} peak resident growth during one training step: {int(out) / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
