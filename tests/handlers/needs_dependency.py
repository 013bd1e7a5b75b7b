"""Imports a package that only its requirements file provides."""

import pyserve_test_dependency


def handle(data, context):
    if data is None:
        return None
    return [pyserve_test_dependency.MESSAGE for _ in data]
