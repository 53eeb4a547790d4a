"""Offline config tools behind the command line (L9, under ``cli``): ``--print-config``
(``printcfg``), ``fastgw diff`` (``diffcmd``) and ``fastgw replay`` (``replay``)."""
