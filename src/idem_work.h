/*
 * idem_work.h
 *	  The application's work function that idem_call runs (idem_work.c).
 */
#ifndef IDEM_WORK_H
#define IDEM_WORK_H

#include "fmgr.h"

/* The name of the composite type a work function returns. */
#define IDEM_RESPONSE_TYPE_NAME "idem_response"

/* What a call site keeps of the work function it last checked. */
typedef struct IdemWork
{
	Oid			funcid;			/* InvalidOid until the first call */
	Oid			roleid;			/* the role its EXECUTE was checked for */
	uint64		generation;		/* of pg_proc changes, when checked */
	Oid			response_type;	/* the extension's idem_response */
	MemoryContext cxt;			/* flinfo's, reset for another work */
	FmgrInfo	flinfo;
} IdemWork;

/* The response a work function returned, checked. */
typedef struct IdemWorkResponse
{
	int32		code;
	Datum		body;			/* 0 for NULL */
	Datum		headers;		/* likewise */
} IdemWorkResponse;

extern void IdemWorkPrepare(IdemWork *work, Oid funcid, Oid caller,
							MemoryContext mcxt);
extern void IdemWorkRun(IdemWork *work, Datum request, bool request_isnull,
						IdemWorkResponse *response);

#endif							/* IDEM_WORK_H */
