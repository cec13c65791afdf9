"""Benchmarks: ESP crypto, throughput between namespaces, many peers, and traffic under
attack. Not the product.

May import the product and ``nattunnel.lab``; nothing in the product imports it.
"""
