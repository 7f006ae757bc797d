"""The network architectures, one module each; every module registers its entries in ``kaldn.registry``."""
