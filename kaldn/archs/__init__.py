"""Peer architectures of the seed papers (LESRCNN, FDIWN, SCNet-T), written by this project.

Each module is a plain ``nn.Module`` built as ``Cls(scale)`` that maps RGB in
[0, 1] to RGB in [0, 1]; whatever input range or mean shift the published
network expects stays inside it. ``kaldn.models`` names them (``lesrcnn-x4``,
``fdiwn-x4``, ``scnet-t-x4``) and ``kaldn.convert`` maps the authors' released
tensors onto them.
"""
