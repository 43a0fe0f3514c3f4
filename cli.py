"""`python cli.py ...` at the repository root: the same as the `shopee-fastai` command."""

from shopee_fastai.cli import main

if __name__ == "__main__":
    main()
