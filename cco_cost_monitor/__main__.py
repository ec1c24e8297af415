"""``python -m cco_cost_monitor`` runs the command line."""

from cco_cost_monitor.cli import run

if __name__ == "__main__":
    run()
