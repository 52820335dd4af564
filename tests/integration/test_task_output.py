"""What a task prints on the embedded cluster reaches the caller, and never blocks a worker."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import fabric

    def chatty(i):
        print("x" * 1000)
        return i

    if __name__ == "__main__":
        with fabric.connect(workers=2) as fx:
            print("total", sum(fx.map(chatty, range(2000), timeout=60)))
""")


def test_two_megabytes_of_task_output_neither_hang_the_map_nor_the_exit(tmp_path):
    """Once ~64 KiB were unread in the node's stdout pipe, every worker blocked in write()."""
    script = tmp_path / "chatty.py"
    script.write_text(SCRIPT)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "total 1999000" in run.stdout
    assert run.stdout.count("x" * 1000) == 2000  # every line the tasks printed reached the caller
