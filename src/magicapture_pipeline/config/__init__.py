"""Typed configuration: one pydantic model per pipeline, paper defaults, one line of help per knob.

Each module here mirrors a ``conf/base/parameters_<name>.yml`` file; nodes validate their
``params:<name>`` dictionary with the matching model, so a typo or a wrong type fails before any
work starts, with the offending key named.
"""
