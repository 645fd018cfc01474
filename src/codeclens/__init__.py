"""codeclens: what does each RVQ layer of a neural audio codec encode?"""

__version__ = "0.1.0"
