"""otcfm: conditional flow matching with minibatch optimal transport.

Library core: :mod:`otcfm.paths`, :mod:`otcfm.couplings`, :mod:`otcfm.matchers`,
:mod:`otcfm.models`, :mod:`otcfm.sampling`, :mod:`otcfm.metrics`, :mod:`otcfm.data`.
"""

__version__ = "0.1.0"
