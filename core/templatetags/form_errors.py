"""``{{ form|top_errors }}``: the errors shown above a form's fields.

A hidden field has no place of its own on the page, so its errors would vanish; they are listed
with the form's non-field errors, each named by the field's label.
"""

from __future__ import annotations

from django import forms, template
from django.utils.translation import gettext as _

register = template.Library()


@register.filter
def top_errors(form: forms.BaseForm) -> list[str]:
    errors = [str(error) for error in form.non_field_errors()]
    for field in form.hidden_fields():
        for error in field.errors:
            errors.append(_("%(field)s: %(error)s") % {"field": field.label, "error": error})
    return errors
