"""The joint pathway: the action plan (plan.py) and its exports, FHIR (fhir.py) and print (printed.py)."""
