"""Train A3C: `python main.py --env-name PongNoFrameskip-v4 --n-workers 8` (see README.md)."""

from a3c.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
