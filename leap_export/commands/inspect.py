import click

from leap_export.commands._options import artifacts_argument


@click.command("inspect")
@artifacts_argument
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--no-hash-check", is_flag=True, help="Do not hash the files (faster on large models).")
def command(artifacts, as_json, no_hash_check):
    """Print a readable summary of an artifact folder's manifest."""
    from leap_export.inspect import summary

    summary(artifacts, as_json=as_json, check_files=not no_hash_check)
