"""Run the featx CLI from a checkout: python cli.py --help."""

from featx.cli import app

if __name__ == "__main__":
    app()
