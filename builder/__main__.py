import sys

try:
    from builder.cli import main

    sys.exit(main())
except KeyboardInterrupt:
    # Ctrl-C while the modules load or the arguments are parsed, before main() handles it:
    # nothing has been done yet, and a traceback would say otherwise.
    print("error: interrupted before anything was done.", file=sys.stderr)
    sys.exit(130)
