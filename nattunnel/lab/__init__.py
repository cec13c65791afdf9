"""The lab: network namespaces with real NAT, an in-process NAT emulator, and strongSwan and
other tunnels as lab peers. Test and benchmark tooling, not the product.

May import the product (everything but ``cli`` and ``bench``); nothing in the product imports
it.
"""
