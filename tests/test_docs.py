"""The docs match the code: WORKSPACE.md's map names paths that exist, design references resolve."""

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
  with open(os.path.join(ROOT, path)) as f:
    return f.read()


def test_every_path_in_the_workspace_map_exists():
  text = _read("WORKSPACE.md")
  table = text.split("## Repository map", 1)[1].split("\n## ", 1)[0]
  paths = re.findall(r"^\| `([^`]+)` \|", table, re.M)
  assert len(paths) > 20
  missing = [p for p in paths if not os.path.exists(os.path.join(ROOT, p.rstrip("/")))]
  assert not missing, missing


def test_every_library_module_is_in_the_map():
  table = _read("WORKSPACE.md").split("## Repository map", 1)[1].split("\n## ", 1)[0]
  modules = [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "jaxnorm", "*.py"))
             if not p.endswith("__init__.py")]
  assert not [m for m in modules if f"`{m}`" not in table]


def test_design_references_point_to_existing_sections():
  design = _read("docs/design.md")
  sections = set(re.findall(r"^## (\d+)\. ", design, re.M))
  cited = {}
  for path in glob.glob(os.path.join(ROOT, "jaxnorm", "**", "*.py"), recursive=True) + [
      os.path.join(ROOT, "README.md"), os.path.join(ROOT, "WORKSPACE.md")]:
    with open(path) as f:
      for number in re.findall(r"docs/design\.md §(\d+)", f.read()):
        cited.setdefault(number, []).append(os.path.relpath(path, ROOT))
  assert cited, "no code cites docs/design.md"
  assert set(cited) <= sections, {n: cited[n] for n in set(cited) - sections}
  assert "DESIGN.md" not in "".join(_read(os.path.relpath(p, ROOT)) for p in glob.glob(
      os.path.join(ROOT, "jaxnorm", "**", "*.py"), recursive=True))


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
  lines = _read("README.md").splitlines()
  assert lines[0] == "```sh" and lines[3] == "```"
  install_and_run, install_and_test = lines[1], lines[2]
  assert install_and_run.startswith("pip install -e '.[experiments]' && python -m experiments.")
  assert install_and_test.startswith("pip install -e '.[test]' && python -m pytest")
  assert _read(".ci/run").rstrip().splitlines()[-1] == install_and_test


def test_every_experiment_has_its_entry_point_run_configs_and_test():
  folders = [p for p in glob.glob(os.path.join(ROOT, "experiments", "*", ""))
             if not os.path.basename(p.rstrip("/")).startswith("__")]
  assert len(folders) >= 4
  for folder in folders:
    for name in ("__init__.py", "__main__.py", "experiment.py", "experiment_test.py",
                 os.path.join("configs", "default.py")):
      assert os.path.exists(os.path.join(folder, name)), (folder, name)
