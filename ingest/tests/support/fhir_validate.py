"""Validates FHIR R4 JSON resources with fhir.resources (an independent implementation of the
FHIR R4 structure definitions: element names, cardinalities, primitive formats, choice types).

Usage: fhir_validate.py FILE  -- FILE holds a JSON array of resources.
Prints `ok N` and exits 0 when all N validate; prints each error and exits 1 otherwise.
Exits 3 when fhir.resources is missing or is not the FHIR 4.0.1 (R4) release.
"""

import decimal
import json
import sys

try:
    import fhir.resources as fr
    from fhir.resources import construct_fhir_element
except ImportError as e:  # pragma: no cover
    print(f"fhir.resources is not installed: {e}")
    sys.exit(3)

if fr.__fhir_version__ != "4.0.1":
    print(f"fhir.resources {fr.__version__} implements FHIR {fr.__fhir_version__}, not R4 4.0.1")
    sys.exit(3)


def validate(resource, where, errors):
    kind = resource.get("resourceType")
    try:
        construct_fhir_element(kind, resource)
    except Exception as e:  # pydantic.ValidationError or an unknown resource type
        errors.append(f"{where} ({kind}): {e}")
    # Bundle entries are validated as what they are, not only as a generic Resource.
    if kind == "Bundle":
        for i, entry in enumerate(resource.get("entry", [])):
            if "resource" in entry:
                validate(entry["resource"], f"{where}.entry[{i}]", errors)


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        # Decimals as decimal.Decimal: the validator sees the digits that were sent.
        resources = json.load(f, parse_float=decimal.Decimal)
    errors = []
    for i, resource in enumerate(resources):
        validate(resource, f"[{i}]", errors)
    if errors:
        print("\n".join(errors))
        sys.exit(1)
    print(f"ok {len(resources)} (fhir.resources {fr.__version__}, FHIR {fr.__fhir_version__})")


main()
