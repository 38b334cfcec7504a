# SparseMat for Nuke: run by Nuke at GUI start-up, after init.py. Adds the SparseMat toolbar entry
# and menu: create the node (sparsemat_nuke.node.create()), and render with mattes.
import nuke

_COMMAND = "import sparsemat_nuke.node\nsparsemat_nuke.node.create()"

nuke.menu("Nodes").addMenu("SparseMat", tooltip="SparseMat mattes").addCommand("SparseMat", _COMMAND)
_MENU = nuke.menu("Nuke").addMenu("SparseMat")
_MENU.addCommand("Create SparseMat node", _COMMAND)
# Renders the selected Writes (else every enabled one) over the script's range, matting first: a
# plain Render cannot matte (Nuke refuses renders inside renders).
_MENU.addCommand("Render with SparseMat", "import sparsemat_nuke.work\nsparsemat_nuke.work.render_with_mattes()")
