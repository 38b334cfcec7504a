# SparseMat for Nuke: run by Nuke at GUI start-up, after init.py. Adds the SparseMat toolbar and
# menu entries; both create the node with sparsemat_nuke.node.create().
import nuke

_COMMAND = "import sparsemat_nuke.node\nsparsemat_nuke.node.create()"

nuke.menu("Nodes").addMenu("SparseMat", tooltip="SparseMat mattes").addCommand("SparseMat", _COMMAND)
nuke.menu("Nuke").addMenu("SparseMat").addCommand("Create SparseMat node", _COMMAND)
