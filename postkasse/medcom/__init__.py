"""MedCom messages: OIOXML and FHIR in (parse), MedCom receipts and acknowledgements out (answers)."""

from postkasse.medcom.document import Attachment, Document, Letter, MedcomError, Party

__all__ = ["Attachment", "Document", "Letter", "MedcomError", "Party"]
