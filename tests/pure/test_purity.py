"""attention/ and toy/ are pure torch: they import without the host, and never import it."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_attention_package_never_imports_the_host():
    code = (
        "import importlib.util, sys, pkgutil\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('comfy', 'comfy_api', 'nodes', 'folder_paths'):\n"
        "            raise ImportError('host import from attention/: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"spec = importlib.util.spec_from_file_location('attention_lab', r'{ROOT / '__init__.py'}',"
        f" submodule_search_locations=[r'{ROOT}'])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['attention_lab'] = m; spec.loader.exec_module(m)\n"
        "import attention_lab.attention as a, attention_lab.toy as t\n"
        "for pkg in (a, t):\n"
        "    for info in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(pkg.__name__ + '.' + info.name)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
