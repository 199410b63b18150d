"""Scripts fed to `bash -s`, run by the real bash."""

import subprocess

from labctl.transport import bash_stdin_script

# `ctr run` and `docker run -i` read stdin; cat stands in for them.
SCRIPT = """set -euo pipefail
cat > /dev/null
cat <<'END'
after the command that read stdin
END
"""


def bash(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-s"], input=script, capture_output=True, text=True, timeout=30)


def test_a_command_reading_stdin_does_not_swallow_the_rest_of_the_script():
    # The hazard: fed as it is, the script ends at cat, silently, with status 0.
    plain = bash(SCRIPT)
    assert (plain.returncode, plain.stdout) == (0, "")
    wrapped = bash(bash_stdin_script(SCRIPT))
    assert (wrapped.returncode, wrapped.stdout) == (0, "after the command that read stdin\n")


def test_the_wrapped_script_keeps_its_exit_status():
    assert bash(bash_stdin_script("set -e\nfalse\necho unreachable")).returncode == 1
    assert bash(bash_stdin_script("exit 3")).returncode == 3
