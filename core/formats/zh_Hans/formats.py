# Overrides of Django's zh_Hans number formats (FORMAT_MODULE_PATH = ["core.formats"]); every
# other format (dates, times) still comes from Django's own zh_Hans module.
#
# Django ships zh_Hans with no thousand separator and groups of 4; amounts in mainland Chinese
# finance and in CLDR's zh locale group by 3 with a comma: ¥1,234,567.00.
DECIMAL_SEPARATOR = "."
THOUSAND_SEPARATOR = ","
NUMBER_GROUPING = 3
