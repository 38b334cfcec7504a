# SparseMat for Nuke: run by Nuke at start-up in every mode (GUI, nuke -t, nuke -x, farm), because
# install/install_nuke.py put this folder on the plugin path (nuke.pluginAddPath).
#
# It makes the engine client's dependencies importable (the installer's folder for this Python
# version) and registers the render callback that checks each frame a downstream Write renders
# has been matted. Nothing here imports torch; a missing dependency only prints a warning.
import sparsemat_nuke

sparsemat_nuke.add_site_packages()
try:
    import sparsemat_nuke.work
except ImportError as _error:  # numpy missing: Nuke still starts
    print(f"SparseMat: not loaded ({_error}); run install/install_nuke.py for this Nuke's Python version")
else:
    sparsemat_nuke.work.register_callbacks()
