from syncd.cli import main

# Guarded: extraction workers are spawned, and spawning re-imports the main module.
if __name__ == "__main__":
    raise SystemExit(main())
