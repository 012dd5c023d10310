import click

@click.group()
def main():
    """skd"""
