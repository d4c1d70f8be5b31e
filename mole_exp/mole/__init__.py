"""The MoLE mechanism: gates (Eqs. 9-11), the mixing linear (Eqs. 12-13), the router, injection into a base.

Imports only base/ and experts/; composers turn a config into these objects.
"""
