"""The pure core: standard library only, no clock, no database, no network, no Jinja.

Everything in here takes its inputs (including `now`) as arguments and returns data,
so the whole service-desk process can be tested as tables.
"""
